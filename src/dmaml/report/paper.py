"""The paper's published values beside ours: cell by cell matching, differences and verdicts.

``workflow/paper/tables.csv`` holds the paper's Tables 1-5, one row per cell (:func:`load_paper`).
A cell of ours matches a paper cell when table, dataset, ways, shots, workers and step are equal
(and K, the adaptation points, for Table 1), and only then. Each matched cell gets the difference
ours - paper and a verdict (:func:`verdict`): ``=`` when the two 95% intervals overlap, ``better``
or ``worse`` when they do not (higher accuracy, lower MSE is better), ``-`` when there is nothing to
compare (no paper value for that cell, or no score of ours).

:func:`reproduction` sums the compared tables up in one Markdown page; run it as
``python -m dmaml.report.paper TABLE.csv... --paper workflow/paper/tables.csv --out FILE.md``.

Example::

    table, runs = tables.checkpoint_table(run_dirs)
    table = compare(table, load_paper("workflow/paper/tables.csv"), "table2")
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from dmaml.config import DATASET_DEFAULTS
from dmaml.errors import ReportError
from dmaml.report import NONE, SHORT, VERDICTS, counts, listing
from dmaml.report.tables import scores_text

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


def verdict(mean: float, ci: float, paper_mean: float, paper_ci: float, metric: str) -> str:
    """``=`` when the 95% intervals ``mean ± ci`` and ``paper_mean ± paper_ci`` overlap, else
    ``better`` or ``worse`` (accuracy: higher is better; mse: lower is better); ``-`` when a value
    is missing."""
    if any(pd.isna(x) for x in (mean, ci, paper_mean, paper_ci)):
        return NONE
    gap = mean - paper_mean
    if abs(gap) <= ci + paper_ci + 1e-12:  # intervals that touch overlap (round-off aside)
        return "="
    return "better" if (gap > 0) == (metric == "accuracy") else "worse"


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
    differences, verdicts = [], []
    for _, row in out.iterrows():
        mean, ci = scores_text(row["mean"], row["ci95"])
        if pd.isna(row["paper_mean"]) or not mean:
            differences.append("")
            verdicts.append(NONE)
            continue
        places = min(_places(mean), paper_places)
        differences.append(f"{float(mean) - float(row['paper_mean']):+.{places}f}")
        verdicts.append(verdict(float(mean), float(ci), float(row["paper_mean"]),
                                float(row["paper_ci95"]), row["metric"]))
    return out.assign(difference=differences, verdict=verdicts)


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


def _section(name: str, ours: pd.DataFrame, paper: pd.DataFrame) -> tuple[list[str], str]:
    """One table's summary (Markdown lines) and its row of the overview."""
    cells = paper[paper["table"] == name]
    keys = [*MATCH, *(["K"] if "K" in ours else [])]
    rows = [*(["shots"] if ours["shots"].nunique() > 1 else []), "workers"]
    varying = [*rows, "K" if "K" in ours else "step"]
    dataset = listing(ours["dataset"])
    lines = [f"## {name}: {dataset}, N = {listing(ours['ways'])}, k = {listing(ours['shots'])}", ""]
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
            f"{_cell_name(r, varying)}: ours {r['mean']} ± {r['ci95']}, paper {r['paper_mean']} "
            f"± {r['paper_ci95']}, {r['difference']} ({r['verdict']})" for _, r in top.iterrows())
            + ".")
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
    unlike = [f"{SHORT[k]} = {listing(ours[k])} (paper {v})" for k, v in theirs.items()
              if set(ours[k]) != {v}]
    if set(tasks) != {600}:
        unlike.append(f"{listing(tasks)} test tasks (paper 600)")
    if unlike:
        lines.append("- Unlike the paper (its Table 6): " + ", ".join(unlike) + ".")
    lines.append(f"- Full configuration: `results/tables/{name}.md`.")
    summary = [name, str(len(ours)), str(len(compared)),
               *(str((compared["verdict"] == v).sum()) for v in VERDICTS)]
    return lines, "| " + " | ".join(summary) + " |"


def reproduction(table_csvs: list[str | Path], paper: pd.DataFrame) -> str:
    """The Markdown page that sums up, for each table CSV (written with the paper's columns), the
    cells compared, the verdicts, the largest differences and the settings and seeds of ours."""
    overview, sections = [], []
    for path in map(Path, table_csvs):
        text = {c: str for c in ("mean", "ci95", "paper_mean", "paper_ci95", "difference")}
        ours = pd.read_csv(path, dtype=text, keep_default_na=False)  # scores as the table shows them
        if "verdict" not in ours:
            raise ReportError(f"{path}: no verdict column; make the table with `dmaml table ... "
                              "--paper workflow/paper/tables.csv --paper-table NAME`")
        lines, row = _section(path.stem, ours, paper)
        sections += ["", *lines]
        overview.append(row)
    head = ["# Reproduction: our tables beside the paper's", "",
            "Each cell of ours (mean ± 95% CI over its test tasks) beside the paper's value of the "
            "same table, dataset, N, k, n and step (and K for Table 1, whose models are after 10,000 "
            "steps): `=` the two 95% intervals "
            "overlap; `better` / `worse`: they do not, and ours is higher / lower in accuracy "
            "(lower / higher in MSE); `-`: the paper has no value for that cell. The paper gives "
            "accuracies to 2 decimals, so a difference under 0.005 is within its rounding.", "",
            "| table | cells | compared | = | better | worse |", "|---|---|---|---|---|---|",
            *overview]
    return "\n".join([*head, *sections]) + "\n"


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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
