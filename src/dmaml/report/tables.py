"""The paper's tables: rows are worker counts n, each cell a test score of the best seed.

For each n, the seed whose validation score after its last step is best (highest accuracy, or
lowest MSE for sine) is chosen, and its test scores (mean +- 95% CI over the stated number of test
tasks) fill the row: at each checkpoint step (Tables 2-5) or for each number of adaptation points
K (Table 1). Every seed's score of a cell travels with it (:data:`SEED_SCORES`): the tables show
the range of the means over seeds, and the verdict looks at all of them. A run that diverged is
marked with a dagger. Scores are rounded to what their interval supports: the CI to 2
significant digits, the mean to the same decimal place. Each table is written
as a tidy CSV whose columns name the configuration (the settings that identify the experiment and
those that vary), and as Markdown and HTML twins in the paper's layout whose caption states the
configuration behind it (the HTML one is what the Snakemake report shows). Given the paper's values
(:func:`dmaml.report.paper.compare`), each row of ours has one under it with the paper's value of
each cell, the difference and a verdict, and the CSV has them as columns.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd
import yaml

from dmaml import atomic
from dmaml.report import (
    IDENTITY,
    SETTINGS,
    SHORT,
    ReportError,
    counts,
    describe,
    listing,
    load_runs,
    metrics,
    run_csv,
    selection_note,
)


def row_keys(runs: pd.DataFrame) -> list[str]:
    """The settings that tell the rows apart: those that vary between runs, except the seed
    (always including the worker count); the merge strategy (merge, its temperature or drop
    count, the worker schedule: :func:`~dmaml.report.strategy`) as one, where it varies."""
    keys = [k for k in SETTINGS if k not in ("seed", "workers", "merge") and runs[k].nunique() > 1]
    strategy = ["strategy"] if runs["strategy"].nunique() > 1 else []
    return [*keys, *strategy, "workers"]


def config_columns(runs: pd.DataFrame) -> list[str]:
    """The settings a table's CSV carries: :data:`IDENTITY` and every other that varies."""
    keys = row_keys(runs)
    return [k for k in [*SETTINGS, "strategy"] if k in IDENTITY or k in keys]


def _decimals(ci: float) -> int | None:
    """Decimal places of ``ci`` rounded to 2 significant digits (3 when it is 0, as for a score
    every task shares; None when it is missing: a diverged run's empty cell)."""
    if pd.isna(ci):
        return None
    if ci <= 0:
        return 3
    ci = float(f"{ci:.2g}")  # first, so that 0.0996 -> 0.10 gives 2 places, as 0.10 itself does
    return 1 - math.floor(math.log10(ci))


def round_to_ci(mean: float, ci: float) -> tuple[float, float]:
    """``mean`` and ``ci`` rounded to what the CI supports: the CI to 2 significant digits, the mean
    to the same decimal place."""
    decimals = _decimals(ci)
    return (mean, ci) if decimals is None else (round(mean, decimals), round(ci, decimals))


def scores_text(mean: float, ci: float) -> tuple[str, str]:
    """``mean`` and ``ci`` rounded by :func:`round_to_ci`, as text that keeps the CI's significant
    zeros (0.030, not 0.03); empty when there is no score."""
    decimals = _decimals(ci)
    if decimals is None or pd.isna(mean):
        return "", ""
    places = max(decimals, 0)
    mean, ci = round_to_ci(mean, ci)
    return f"{mean:.{places}f}", f"{ci:.{places}f}"


def cell(mean: float, ci: float) -> str:
    """A table cell, 'mean ± ci95' (:func:`scores_text`), or '—' when there is no score."""
    mean_text, ci_text = scores_text(mean, ci)
    return f"{mean_text} ± {ci_text}" if mean_text else "—"


def _choose(group: pd.DataFrame) -> pd.Series:
    """The run of ``group`` (the seeds of one row) whose final validation score is best; a run
    that diverged only when every seed did."""
    scores = []
    for run in group["run"]:
        m = metrics(run)
        if m.empty:
            raise ReportError(f"{run}: metrics.csv has no rows; the run has not validated yet")
        last = m.iloc[-1]
        scores.append(last["val_acc"] if "val_acc" in m else -last["val_loss"])
    group = group.assign(final_val=scores, ok=group["status"] != "diverged")
    return group.sort_values(["ok", "final_val"], kind="stable", na_position="first").iloc[-1]


def rows(runs: pd.DataFrame) -> list[tuple[pd.Series, pd.DataFrame]]:
    """For each row (see :func:`row_keys`): its chosen run (:func:`_choose`) and all its seeds."""
    return [(_choose(group), group) for _, group in runs.groupby(row_keys(runs), sort=True)]


def best_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """For each row (see :func:`row_keys`), the run whose final validation score is best; a run
    that diverged is chosen only when every seed did."""
    return pd.DataFrame([best for best, _ in rows(runs)]).reset_index(drop=True)


# a cell's scores of every seed of its row: [(seed, mean, ci95), ...], NaN where a seed has none
SEED_SCORES = "seed_scores"


def _seed_scores(scores: dict[int, pd.DataFrame], column: str, value) -> list[tuple]:
    """The scores at ``column`` = ``value`` of each seed (``scores``: seed -> its test scores)."""
    out = []
    for seed, frame in sorted(scores.items()):
        match = frame[frame[column] == value]
        mean, ci = (match["mean"].iloc[0], match["ci95"].iloc[0]) if len(match) else (math.nan,
                                                                                       math.nan)
        out.append((int(seed), float(mean), float(ci)))
    return out


def checkpoint_table(run_dirs: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 2-5: test scores at each checkpoint step of the best seed per n."""
    runs = load_runs(run_dirs)
    keys = config_columns(runs)
    cells = []
    for best, group in rows(runs):
        run = Path(best["run"])
        test = run_csv(run / "test.csv")
        seeds = {s: run_csv(Path(r) / "test.csv") for s, r in zip(group["seed"], group["run"])}
        if best["status"] == "diverged":  # no scores from the divergence on: empty cells
            steps = yaml.safe_load((run / "config.yaml").read_text())["checkpoint_steps"]
            missing = sorted(set(steps) - set(test["step"]))
            test = pd.concat([test, pd.DataFrame({"step": missing, "tasks": 0})])
            test["metric"] = "accuracy" if "val_acc" in metrics(run) else "mse"
        elif test.empty:
            raise ReportError(f"{run}: test.csv has no rows; set checkpoint_steps and "
                              "test_tasks > 0")
        for _, t in test.iterrows():
            cells.append({**{k: best[k] for k in keys}, "seed": best["seed"],
                          "step": int(t["step"]), "metric": t["metric"], "mean": t["mean"],
                          "ci95": t["ci95"], "tasks": int(t["tasks"]), "status": best["status"],
                          "validation": best["validation"],
                          SEED_SCORES: _seed_scores(seeds, "step", t["step"])})
    return pd.DataFrame(cells), runs


def shots_table(evaluations: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1: test MSE after adaptation on K points, from ``dmaml evaluate --out`` files (of the
    runs' final parameters: ``step`` is the run's last step)."""
    results = pd.DataFrame([json.loads(Path(e).read_text()) for e in evaluations])
    results = results.rename(columns={"shots": "K"})  # K of the test; shots: of the training
    runs = load_runs(sorted(set(results["run"])))
    keys = config_columns(runs)
    chosen = []
    for best, group in rows(runs):
        seeds = {s: results[results["run"] == r] for s, r in zip(group["seed"], group["run"])}
        chosen += [{**{k: best[k] for k in ("run", *keys, "seed", "status", "validation")}, "K": k,
                    "step": best["steps"], SEED_SCORES: _seed_scores(seeds, "K", k)}
                   for k in sorted(set(seeds[best["seed"]]["K"]))]
    table = results.merge(pd.DataFrame(chosen), on=["run", "K"])
    return table[[*keys, "seed", "K", "step", "metric", "mean", "ci95", "tasks", "status",
                  "validation", SEED_SCORES]], runs


def seed_range(scores: list[tuple]) -> tuple[str, str, str]:
    """The seeds of ``scores`` (:data:`SEED_SCORES`) that have a score, and the lowest and highest
    of their means, as the table shows them (:func:`scores_text`): ``("0, 1", "0.80", "0.83")``."""
    shown = [(seed, scores_text(m, c)[0]) for seed, m, c in scores]
    shown = sorted(((seed, m) for seed, m in shown if m), key=lambda x: float(x[1]))
    if not shown:
        return "", "", ""
    return listing(seed for seed, _ in shown), shown[0][1], shown[-1][1]


def seed_columns(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with :data:`SEED_SCORES` as text (``0: 0.812 ± 0.010; 1: —``) and the columns
    ``seeds`` (those with a score), ``seed_min`` and ``seed_max`` (:func:`seed_range`) after
    ``ci95``; unchanged without :data:`SEED_SCORES`."""
    if SEED_SCORES not in table:
        return table
    ranges = pd.DataFrame([seed_range(x) for x in table[SEED_SCORES]],
                          columns=["seeds", "seed_min", "seed_max"], index=table.index)
    text = ["; ".join(f"{seed}: {cell(m, c)}" for seed, m, c in x) for x in table[SEED_SCORES]]
    out = table.drop(columns=SEED_SCORES)
    at = list(out.columns).index("ci95") + 1
    for i, (name, values) in enumerate([*ranges.items(), (SEED_SCORES, text)]):
        out.insert(at + i, name, values)
    return out


def _our_cell(row: pd.Series) -> str:
    """A cell of ours: 'mean ± ci95' of the chosen seed, with the range of the means over all
    seeds after it where more than one has a score: '0.812 ± 0.010 (0.795–0.830)'."""
    text = cell(row["mean"], row["ci95"]) + (" †" if row["status"] == "diverged" else "")
    seeds, low, high = seed_range(row[SEED_SCORES]) if SEED_SCORES in row else ("", "", "")
    return text + (f" ({low}–{high})" if "," in seeds else "")


PAPER_ROW = "paper"  # the first cell of the row under each of ours that shows the paper's


def _paper_cell(row: pd.Series) -> str:
    """The paper's cell beside one of ours: 'paper mean ± ci95 · ours - paper · verdict', '-'
    where the paper has none (:func:`dmaml.report.paper.compare` adds these columns)."""
    if pd.isna(row["paper_mean"]):
        return row["verdict"]
    one = " (1 seed)" if row.get("seeds_compared") == 1 else ""
    parts = [f"{row['paper_mean']} ± {row['paper_ci95']}", row["difference"], row["verdict"] + one]
    return " · ".join(p for p in parts if p)


def _layout(table: pd.DataFrame, column: str,
            runs: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """The paper's layout: a header, a row per n with a cell per ``column`` value ('mean ± ci95'),
    under it, where ``table`` has the paper's values, a row with the paper's beside each cell, and
    the notes below the table."""
    keys = [k for k in row_keys(runs) if k != column]
    table = table.sort_values([*keys, column])
    cells = table.assign(cell=[_our_cell(r) for _, r in table.iterrows()])
    wide = cells.pivot(index=keys, columns=column, values="cell")
    seeds = table.groupby(keys)["seed"].first()
    header = [", ".join(SHORT.get(k, k) for k in keys) + " (seed)",
              *(f"{column} {c}" for c in wide.columns)]
    paper = "verdict" in table
    if paper:
        papers = cells.assign(cell=[_paper_cell(r) for _, r in table.iterrows()]).pivot(
            index=keys, columns=column, values="cell")
        # the paper's row only under a row of ours with at least one cell of the paper
        valued = table.assign(v=table["paper_mean"].notna()).groupby(keys)["v"].any()
    lines = []
    for index, row in wide.iterrows():
        lines.append([", ".join(map(str, index if isinstance(index, tuple) else (index,)))
                      + f" ({seeds[index]})", *row.fillna("")])
        if paper and valued[index]:
            lines.append([PAPER_ROW, *papers.loc[index].fillna("")])
    several = SEED_SCORES in table and any("," in seed_range(x)[0] for x in table[SEED_SCORES])
    notes = [f"Cells: test {table['metric'].iloc[0]}, mean ± 95% CI (1.96·SD/√tasks) over "
             f"{table['tasks'].max()} test tasks, of the seed (of {listing(runs['seed'])}) with "
             "the best validation score after the last step"
             + ("; in parentheses, the lowest and highest mean over all seeds." if several else ".")
             + (" † the run diverged (— : no score after that)."
                if (table["status"] == "diverged").any() else "")
             + " " + selection_note(runs["validation"])]
    if paper and valued.any():
        from dmaml.report.paper import RULE  # the report's one statement of the rule

        notes.append("Under each row with a value of the paper: the paper's value of that cell "
                     "· ours (chosen seed) - paper · verdict (" + ("higher" if table["metric"].iloc[0]
                                                                   == "accuracy" else "lower")
                     + " is better; - the paper has no value for that cell; (1 seed): only one "
                     "seed of ours has a score there). " + RULE + " Against the paper: "
                     + counts(table["verdict"]) + ".")
    elif paper:
        notes.append("The paper has no value for any cell of this table: nothing is compared.")
    notes.append(f"Configuration: {describe(runs)}.")
    return header, lines, notes


def markdown(table: pd.DataFrame, column: str, title: str, runs: pd.DataFrame) -> str:
    """The table in Markdown: its title, the paper's layout (:func:`_layout`) and its notes."""
    header, rows, notes = _layout(table, column, runs)
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([*lines, *(x for note in notes for x in ("", note))]) + "\n"


def html_page(table: pd.DataFrame, column: str, title: str, runs: pd.DataFrame) -> str:
    """The table as a small HTML page (the Markdown twin's content), for the Snakemake report."""
    header, rows, notes = _layout(table, column, runs)

    def tr(cells: list[str], tag: str) -> str:
        start = '<tr class="paper">' if cells[0] == PAPER_ROW else "<tr>"
        return start + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    return "\n".join([
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif} table{border-collapse:collapse} "
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right} "
        "tr.paper td{color:#555;font-size:85%;border-top:none}</style></head><body>",
        f"<h3>{html.escape(title)}</h3>", "<table>", tr(header, "th"),
        *(tr(row, "td") for row in rows), "</table>",
        *(f"<p>{html.escape(note)}</p>" for note in notes), "</body></html>"]) + "\n"


def write(table: pd.DataFrame, column: str, title: str, runs: pd.DataFrame, out: Path) -> None:
    """Write ``out`` (CSV, scores as :func:`scores_text` gives them) and its Markdown and HTML twins
    (``out`` with suffix ``.md`` and ``.html``), each atomically."""
    if not isinstance(title, str):
        raise ReportError(f"{out}: the table title must be text, got a {type(title).__name__} "
                          f"({title!r}); give it as a string")
    out = Path(out)
    scores = [scores_text(m, c) for m, c in zip(table["mean"], table["ci95"])]
    csv = seed_columns(table.assign(mean=[m for m, _ in scores], ci95=[c for _, c in scores]))
    for path, text in ((out, csv.to_csv(index=False)),
                       (out.with_suffix(".md"), markdown(table, column, title, runs)),
                       (out.with_suffix(".html"), html_page(table, column, title, runs))):
        atomic.write_text(path, text)
