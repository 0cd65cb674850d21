"""The paper's published values beside ours: cell by cell matching, differences and verdicts.

``workflow/paper/tables.csv`` holds the paper's Tables 1-5, one row per cell (:func:`load_paper`).
A cell of ours matches a paper cell when table, dataset, ways, shots, workers and step are equal
(and K, the adaptation points, for Table 1), and only then. Each matched cell gets the difference
ours (the chosen seed) - paper and a verdict over all our seeds (:data:`RULE`, :func:`verdict`):
``=``, ``better`` or ``worse`` (higher accuracy, lower MSE is better), ``-`` when there is nothing
to compare (no paper value for that cell, or no score of ours). :func:`floor_ratios` sets a
printed ± beside the narrowest 95% interval its accuracy allows: the evidence that the paper's
Omniglot ± is a standard error (:data:`STANDARD_ERROR`).

:func:`reproduction` sums the compared tables up in one Markdown page; run it as
``python -m dmaml.report.paper TABLE.csv... --paper workflow/paper/tables.csv --out FILE.md``.

Example::

    table, runs = tables.checkpoint_table(run_dirs)
    table = compare(table, load_paper("workflow/paper/tables.csv"), "table2")
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from dmaml import atomic
from dmaml.config import DATASET_DEFAULTS
from dmaml.errors import ReportError
from dmaml.report import NONE, SHORT, UNKNOWN, VERDICTS, caveats, counts, listing, selection_note
from dmaml.report.tables import SEED_SCORES, scores_text

COLUMNS = ["table", "dataset", "ways", "shots", "workers", "K", "step", "metric", "mean", "ci95",
           "source"]
MATCH = ["dataset", "ways", "shots", "workers", "step"]  # and K where a table has it (Table 1)


def load_paper(path: str | Path) -> pd.DataFrame:
    """The paper's cells from ``path`` (``#`` lines skipped): :data:`COLUMNS`, with ``mean`` and
    ``ci95`` kept as the paper prints them (text, so that 0.10 stays 0.10)."""
    try:
        paper = pd.read_csv(path, comment="#", dtype={"mean": str, "ci95": str},
                            keep_default_na=False, na_values={"K": [""]})
    except (OSError, pd.errors.ParserError) as e:
        raise ReportError(f"{path}: cannot read the paper's values ({e})") from None
    missing = [c for c in COLUMNS if c not in paper.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {missing}; the header must be "
                          f"{','.join(COLUMNS)}")
    for column in ("mean", "ci95"):
        bad = pd.to_numeric(paper[column], errors="coerce").isna()
        if bad.any():
            raise ReportError(f"{path}: {column} is not a number in line(s) of the table(s) "
                              f"{listing(paper.loc[bad, 'table'])}; give a number in every row")
    unknown = set(paper["metric"]) - {"accuracy", "mse"}
    if unknown:
        raise ReportError(f"{path}: unknown metric(s) {sorted(unknown)}; use accuracy or mse")
    paper["K"] = paper["K"].astype("Int64")
    twice = paper.duplicated(["table", *MATCH, "K"], keep=False)
    if twice.any():
        raise ReportError(f"{path}: {twice.sum()} rows give the same cell twice (table, {', '.join(MATCH)}, "
                          f"K); keep one row per cell:\n{paper[twice].to_string(index=False)}")
    return paper[COLUMNS]


# The verdict rule, in one sentence: tables, reproduction.md and docs/reproduction.md
RULE = ("A cell is `=` when the paper's value, widened by its rounding (±0.005: it prints 2 "
        "decimals), lies within the 95% interval of the difference from at least one of our seeds "
        "(or between our seeds), and `better` or `worse` only when every one of our seeds is "
        "beyond it on the same side, where the paper's Omniglot ± is read as a standard error "
        "(widened x1.96 to a 95% interval), its miniImageNet and sine ± as 95% intervals, and ours "
        "is 1.96·SD/√tasks.")
# datasets whose printed ± is a standard error (below the binomial floor of a 95% interval: see
# floor_ratios), widened to a 95% interval by this factor
Z95 = 1.96
STANDARD_ERROR = {"omniglot"}


def paper_interval(dataset: str, printed: float) -> float:
    """The half-width of the paper's 95% interval from its printed ± (:data:`STANDARD_ERROR`)."""
    return printed * Z95 if dataset in STANDARD_ERROR else printed


def verdict(seeds: list[tuple[float, float]], paper_mean: float, paper_ci: float, metric: str,
            rounding: float = 0.0) -> str:
    """:data:`RULE` for one cell. ``seeds``: (mean, 95% half-width) of each of our seeds (NaN for a
    seed without a score, e.g. diverged: left out); ``paper_ci``: the paper's 95% half-width
    (:func:`paper_interval`); ``rounding``: half a unit of the paper's last printed place.

    A seed is consistent with the paper when |mean - paper| <= sqrt(ci^2 + paper_ci^2) + rounding
    (the 95% interval of the difference of two independent estimates, widened by the paper's
    rounding). ``=`` when a seed is, or when seeds lie on both sides of the paper's value;
    ``better`` / ``worse`` when all are beyond it on one side (accuracy: higher is better; mse:
    lower is better); ``-`` when nothing can be compared."""
    scored = [(m, c) for m, c in seeds if not (pd.isna(m) or pd.isna(c))]
    if not scored or pd.isna(paper_mean) or pd.isna(paper_ci):
        return NONE
    sides = set()
    for mean, ci in scored:
        gap = mean - paper_mean
        if abs(gap) <= (ci**2 + paper_ci**2) ** 0.5 + rounding + 1e-12:  # round-off aside
            return "="
        sides.add(gap > 0)
    if len(sides) > 1:
        return "="  # the paper's value lies between our seeds
    return "better" if sides.pop() == (metric == "accuracy") else "worse"


def binomial_floor(p: float, tasks: int, answers: int) -> float:
    """The narrowest a 95% interval (1.96·SD/√tasks of per-task accuracies) can be at mean
    accuracy ``p`` over ``tasks`` tasks of ``answers`` query examples each: with no variance
    between tasks, a task's accuracy is binomial, of variance p(1-p)/answers."""
    return Z95 * math.sqrt(p * (1 - p) / (tasks * answers))


def floor_ratios(cells: pd.DataFrame, tasks: int = 600) -> pd.DataFrame:
    """The accuracy cells of ``cells`` (the paper's, :func:`load_paper`, or ours: ``mean`` and
    ``ci95`` as numbers or text, ``dataset``, ``ways`` and ``queries`` or the paper's Table 6
    value) with ``answers`` (N·k' query examples of a task), ``floor`` (:func:`binomial_floor`)
    and ``ratio`` (the printed ± over the floor: at least 1 for a 95% interval, and about 1/1.96
    of that for a standard error)."""
    acc = cells[(cells["metric"] == "accuracy") & (cells["mean"].astype(str) != "")].copy()
    queries = (acc["queries"] if "queries" in acc
               else acc["dataset"].map(lambda d: DATASET_DEFAULTS[d]["queries"]))
    acc["answers"] = acc["ways"].astype(int) * queries.astype(int)
    if "tasks" not in acc:
        acc["tasks"] = tasks
    mean, ci = acc["mean"].astype(float), acc["ci95"].astype(float)
    acc["floor"] = [binomial_floor(p, int(t), int(a))
                    for p, t, a in zip(mean, acc["tasks"], acc["answers"])]
    acc["ratio"] = ci / acc["floor"]
    return acc


def floor_summary(cells: pd.DataFrame) -> pd.DataFrame:
    """Per table and k of :func:`floor_ratios`: cells, how many are below the floor, and the
    median, lowest and highest ratio."""
    ratios = floor_ratios(cells)
    return ratios.groupby(["table", "dataset", "ways", "shots"], sort=True)["ratio"].agg(
        cells="size", below=lambda r: int((r < 1).sum()), median="median", low="min",
        high="max").reset_index()


def _places(text: str) -> int:
    """Decimal places of a number as written (``0.90`` -> 2)."""
    return len(text.partition(".")[2])


def compare(table: pd.DataFrame, paper: pd.DataFrame, name: str) -> pd.DataFrame:
    """``table`` (of :func:`~dmaml.report.tables.checkpoint_table` or ``shots_table``) with the
    paper's cell of ``name`` (e.g. ``table2``) beside each of its cells: ``paper_mean``,
    ``paper_ci95`` (as the paper prints them), ``difference`` (ours - paper, as text to the
    places of the less precise of ours and the paper's table) and ``verdict``. Ours are taken as
    rounded to their CI: the numbers the table shows."""
    keys = [*MATCH, *(["K"] if "K" in table else [])]
    missing = [k for k in keys if k not in table]
    if missing:
        raise ReportError(f"{name}: our table has no column(s) {missing} to match the paper on")
    cells = paper.loc[paper["table"] == name, [*keys, "mean", "ci95"]].rename(
        columns={"mean": "paper_mean", "ci95": "paper_ci95"})
    cells = cells.astype({k: table[k].dtype for k in keys if k != "K"})
    out = table.merge(cells, on=keys, how="left", validate="many_to_one")
    # the paper's precision in this table: it prints 0.90 as 0.9, still a mean to 2 places
    paper_places = cells["paper_mean"].map(_places).max()
    rounding = 0.5 * 10.0 ** -paper_places if len(cells) else 0.0
    differences, used, compared, verdicts = [], [], [], []
    for _, row in out.iterrows():
        mean, ci = scores_text(row["mean"], row["ci95"])
        seeds = row[SEED_SCORES] if SEED_SCORES in row else [(row.get("seed"), row["mean"],
                                                              row["ci95"])]
        shown = [scores_text(m, c) for _, m, c in seeds]
        shown = [(float(m), float(c)) for m, c in shown if m]  # ours as the table shows them
        if pd.isna(row["paper_mean"]) or not mean:
            differences.append("")
            used.append("")
            compared.append(len(shown))
            verdicts.append(NONE)
            continue
        places = min(_places(mean), paper_places)
        differences.append(f"{float(mean) - float(row['paper_mean']):+.{places}f}")
        interval = paper_interval(row["dataset"], float(row["paper_ci95"]))
        used.append(f"{interval:.2g}" if row["dataset"] in STANDARD_ERROR else row["paper_ci95"])
        compared.append(len(shown))
        verdicts.append(verdict(shown, float(row["paper_mean"]), interval, row["metric"], rounding))
    return out.assign(paper_ci95_used=used, difference=differences, seeds_compared=compared,
                      verdict=verdicts)


def _paper_runs(dataset: str) -> dict[str, int]:
    """The paper's m and t for ``dataset`` (its Table 6), settings every table's CSV names."""
    return {"steps_per_run": 1, "tasks_per_step": DATASET_DEFAULTS[dataset]["tasks_per_step"]}


def _cell_name(row: pd.Series, varying: list[str]) -> str:
    """A cell in words, e.g. ``n = 4, step 1000`` or ``n = 16, K = 5``."""
    return ", ".join(f"{SHORT.get(k, k)} = {row[k]}" if k != "step" else f"step {row[k]}"
                     for k in varying)


def _missing_settings(ours: pd.DataFrame, cells: pd.DataFrame, keys: list[str]) -> str:
    """Why cells of ours have no paper value: the settings of ours the paper never ran."""
    absent = [f"{SHORT.get(k, k)} = {listing(set(ours[k]) - set(cells[k]))}"
              for k in keys if set(ours[k]) - set(cells[k])]
    return "; ".join(absent) or "combinations of settings the paper did not run"


def _range(row: pd.Series) -> str:
    """`` (seeds 0.80–0.83)``: the range of our seeds' means of a cell, where it has several."""
    several = "seeds" in row and "," in str(row["seeds"])
    return f" (seeds {row['seed_min']}–{row['seed_max']})" if several else ""


def _section(name: str, ours: pd.DataFrame, paper: pd.DataFrame) -> tuple[list[str], str]:
    """One table's summary (Markdown lines) and its row of the overview."""
    cells = paper[paper["table"] == name]
    keys = [*MATCH, *(["K"] if "K" in ours else [])]
    rows = [*(["shots"] if ours["shots"].nunique() > 1 else []), "workers"]
    varying = [*rows, "K" if "K" in ours else "step"]
    dataset = listing(ours["dataset"])
    lines = [f"### {name}: {dataset}, N = {listing(ours['ways'])}, k = {listing(ours['shots'])}", ""]
    lines.append(f"- Cells: {counts(ours['verdict'])}.")
    compared = ours[ours["verdict"] != NONE]
    if len(compared) < len(ours):
        lines.append(f"- Not compared: {len(ours) - len(compared)} cells, the paper has no value "
                     f"for {_missing_settings(ours, cells, keys)}"
                     + (" (or ours has no score)" if (ours["mean"] == "").any() else "") + ".")
    if not compared.empty:
        top = compared.assign(size=compared["difference"].astype(float).abs()).nlargest(
            3, "size", keep="first")
        lines.append("- Largest differences (ours - paper): " + "; ".join(
            f"{_cell_name(r, varying)}: ours {r['mean']} ± {r['ci95']}{_range(r)}, paper "
            f"{r['paper_mean']} ± {r['paper_ci95']}, {r['difference']} ({r['verdict']})"
            for _, r in top.iterrows()) + ".")
    left = cells.merge(ours[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    left = left[left["_merge"] == "left_only"]
    if not left.empty:
        lines.append(f"- Paper cells without one of ours: {len(left)} (ours has no "
                     f"{_missing_settings(cells, ours, keys)}).")
    seeds = ours.drop_duplicates(rows).sort_values(rows)
    tasks = ours.loc[ours["mean"] != "", "tasks"]  # a diverged run's empty cells have none
    theirs = _paper_runs(ours["dataset"].iloc[0])
    lines.append("- Ours: " + ", ".join(f"{SHORT[k]} = {listing(ours[k])}" for k in theirs)
                 + f"; {listing(tasks)} test tasks per cell; the seed of each row (best validation "
                 "after the last step): " + ", ".join(
                     f"{_cell_name(r, rows)}: {r['seed']}" for _, r in seeds.iterrows()) + ".")
    if "seeds" in ours:
        counted = ours.loc[ours["seeds"] != "", "seeds"].map(lambda x: len(x.split(",")))
        one = compared[compared["seeds_compared"].astype(int) == 1] if "seeds_compared" in ours \
            else compared
        lines.append(f"- Seeds with a score per cell: {listing(counted)}"
                     + (f"; {len(one)} compared cell(s) rest on one seed of ours, so seed luck "
                        "is not covered there" if len(one) else "") + ".")
    unlike = [f"{SHORT[k]} = {listing(ours[k])} (paper {v})" for k, v in theirs.items()
              if set(ours[k]) != {v}]
    if set(tasks) != {600}:
        unlike.append(f"{listing(tasks)} test tasks (paper 600)")
    if unlike:
        lines.append("- Unlike the paper (its Table 6): " + ", ".join(unlike) + ".")
    lines.append(f"- Full configuration: `results/tables/{name}.md`.")
    single = (compared["seeds_compared"].astype(int) == 1).sum() if "seeds_compared" in ours else 0
    summary = [name, str(len(ours)), str(len(compared)),
               *(str((compared["verdict"] == v).sum()) for v in VERDICTS), str(single)]
    return lines, "| " + " | ".join(summary) + " |"


def _paper_se(paper: pd.DataFrame) -> list[str]:
    """The paper's ± against the binomial floor (:func:`floor_summary`), as Markdown lines."""
    lines = ["| table | dataset | N | k | cells | below the floor | median ratio | range |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in floor_summary(paper).iterrows():
        lines.append(f"| {r['table']} | {r['dataset']} | {r['ways']} | {r['shots']} | {r['cells']} "
                     f"| {r['below']} | {r['median']:.2f} | {r['low']:.2f}-{r['high']:.2f} |")
    return lines


def _ours_floor(tables: list[pd.DataFrame]) -> str:
    """Our own intervals against the same floor: the check of the standard-error reading."""
    cells = pd.concat([t for t in tables if (t["metric"] == "accuracy").any()] or [pd.DataFrame(
        columns=["metric", "mean"])])
    ratios = floor_ratios(cells) if len(cells) else cells
    if ratios.empty:
        return ("Our own intervals cannot be set beside the floor here: these tables have no "
                "accuracy cell.")
    median = ratios["ratio"].median()
    return (f"Ours (1.96·SD/√tasks, {listing(ratios['tasks'])} tasks, "
            f"{listing(ratios['answers'])} query examples a task): {len(ratios)} cells at "
            f"{median:.2f}x the floor (median; {ratios['ratio'].min():.2f}-"
            f"{ratios['ratio'].max():.2f}). A 95% interval of the paper's of the same kind would "
            f"sit near that; a standard error near {median / Z95:.2f}x.")


def _paper_finding(paper: pd.DataFrame) -> str:
    """The paper's ± in words, from :func:`floor_summary`."""
    summary = floor_summary(paper)
    omniglot = summary[summary["dataset"].isin(STANDARD_ERROR)]
    others = summary[~summary["dataset"].isin(STANDARD_ERROR) & (summary["below"] == 0)]
    medians = ", ".join(f"{r['median']:.2f} ({r['ways']}-way {r['shots']}-shot)"
                        for _, r in omniglot.iterrows())
    # below what even a standard error allows (1/1.96 of the floor, less 10% for the one-digit ±)
    lower = omniglot[omniglot["median"] < 0.9 / Z95]
    lower_text = (" " + ", ".join(f"{r['ways']}-way {r['shots']}-shot" for _, r in lower.iterrows())
                  + " is lower than even a standard error allows at one query per class, so the "
                  "paper may have used more query examples there (see the open points)."
                  if len(lower) else "")
    return (f"Its Omniglot ± is below the floor in {omniglot['below'].sum()} of "
            f"{omniglot['cells'].sum()} cells, at a median {medians} of it: near 1/{Z95} = "
            f"{1 / Z95:.2f}, what a standard error (SD/√600) is, rather than the 95% interval it "
            f"names; the verdict widens it x{Z95}.{lower_text} Its {listing(others['dataset'])} ± "
            f"is above the floor ({others['median'].min():.2f}-{others['median'].max():.2f}x, "
            "as a 95% interval must be) and is taken as the 95% interval it names; Table 1's (MSE) "
            "has no such floor and is taken as named (`docs/reproduction.md` gives the reasons).")


def reproduction(table_csvs: list[str | Path], paper: pd.DataFrame) -> str:
    """The Markdown page that sums up, for each table CSV (written with the paper's columns), the
    cells compared, the verdicts, the largest differences and the settings and seeds of ours; the
    rule (:data:`RULE`), the paper's ± against the floor, and what the paper leaves open."""
    overview, sections, tables = [], [], []
    for path in map(Path, table_csvs):
        text = {c: str for c in ("mean", "ci95", "paper_mean", "paper_ci95", "difference",
                                 "seed_min", "seed_max", "seeds")}
        ours = pd.read_csv(path, dtype=text, keep_default_na=False)  # scores as the table shows them
        if "verdict" not in ours:
            raise ReportError(f"{path}: no verdict column; make the table with `dmaml table ... "
                              "--paper workflow/paper/tables.csv --paper-table NAME`")
        lines, row = _section(path.stem, ours, paper)
        sections += ["", *lines]
        overview.append(row)
        tables.append(ours)
    everything = pd.concat(tables)
    compared = (everything["verdict"] != NONE).sum()
    head = ["# Reproduction: our tables beside the paper's", ""]
    if not compared:
        head += [f"**This page answers nothing: none of our {len(everything)} cells has a value "
                 "of the paper to compare with** (the paper reports Tables 2-4 at steps 500-10,000, "
                 "Table 5 at 500-2,000 and Table 1 after 10,000 steps, with t and test tasks of "
                 "its Table 6; the sections below say what each table lacks). "
                 "`presets/check.yaml` reaches the paper's first checkpoints: Table 2 at n = 1, 2, "
                 "4, t = 32, 1,000 MAML steps, checkpoints 500 and 1,000, 600 test tasks, 2 seeds "
                 "(`snakemake --cores 2 table2 reproduction --configfile presets/check.yaml`).", ""]
    validation = sorted(set(everything.get("validation", pd.Series([UNKNOWN]))))
    head += [
        "Each cell of ours is compared with the paper's cell of the same table, dataset, N, k, n "
        "and step (and K for Table 1, whose models are after 10,000 steps). " + RULE, "",
        "Why: two overlapping 95% intervals do not show that two values are equal, so the test is "
        "on the difference; the paper's rounding is part of its value; and each side's cell is "
        "one seed, chosen on a validation of few tasks, so our seeds' spread is shown and a cell is "
        "`better` or `worse` only beyond all of them (`docs/reproduction.md` gives the reasons "
        "and references).", "",
        "| table | cells | compared | = | better | worse | compared on one seed |",
        "|---|---|---|---|---|---|---|", *overview, "", "## The tables", *sections, "",
        "## Seeds", "",
        "A table's row shows the seed chosen as the paper chose (best validation score after the "
        "last step), with the lowest and highest mean over all our seeds in parentheses "
        "(`seed_min`, `seed_max`, `seed_scores` in the CSVs); the verdict looks at every seed "
        "with a score (a diverged seed has none after its divergence). The choice is made on one "
        "validation of few tasks (10 in the paper and config.yaml: at 5-way 1-shot a binomial SD "
        "of about 0.05, larger than the gaps between seeds); the paper's cells are such a choice "
        "too, and its ± covers the test tasks only. "
        + selection_note(validation), "",
        "## The paper's ±", "",
        "A 95% interval over 600 tasks of N·k' query examples (1.96·SD/√600, the MAML convention "
        "and ours) cannot be narrower than 1.96·√(p(1-p)/(600·N·k')), its value with no variance "
        "between tasks. The paper's printed ± over that floor (k' = 1 for Omniglot, 15 for "
        "miniImageNet, its Table 6):", "", *_paper_se(paper), "",
        _paper_finding(paper) + " " + _ours_floor(tables), "",
        "## What the paper leaves open", "", *caveats.markdown()]
    return "\n".join(head) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m dmaml.report.paper``: write the reproduction summary of table CSVs."""
    parser = argparse.ArgumentParser(prog="python -m dmaml.report.paper",
                                     description="Sum up tables made with --paper: cells "
                                                 "compared, verdicts, largest differences.")
    parser.add_argument("tables", nargs="+", type=Path, help="table CSVs (results/tables/tableN.csv)")
    parser.add_argument("--paper", type=Path, required=True, help="the paper's values (CSV)")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    args = parser.parse_args(argv)
    try:
        text = reproduction(args.tables, load_paper(args.paper))
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
