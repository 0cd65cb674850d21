"""The paper's tables: rows are worker counts n, each cell a test score of the best seed.

For each n, the seed whose validation score after its last step is best (highest accuracy, or
lowest MSE for sine) is chosen, and its test scores (mean +- 95% CI over the stated number of test
tasks) fill the row: at each checkpoint step (Tables 2-5) or for each number of adaptation points
K (Table 1). A run that diverged is marked with a dagger. Each table is written as a tidy CSV and a
Markdown twin in the paper's layout whose caption states the configuration behind it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import yaml

from dmaml.report import SETTINGS, ReportError, describe, load_runs, metrics

SHORT = {"workers": "n", "shots": "k", "ways": "N", "steps_per_run": "m", "tasks_per_step": "t"}


def row_keys(runs: pd.DataFrame) -> list[str]:
    """The settings that tell the rows apart: those that vary between runs, except the seed
    (always including the worker count)."""
    keys = [k for k in SETTINGS if k not in ("seed", "workers") and runs[k].nunique() > 1]
    return [*keys, "workers"]


def best_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """For each row (see :func:`row_keys`), the run whose final validation score is best; a run
    that diverged is chosen only when every seed did."""
    chosen = []
    for _, group in runs.groupby(row_keys(runs), sort=True):
        scores = []
        for run in group["run"]:
            m = metrics(run)
            if m.empty:
                raise ReportError(f"{run}: metrics.csv has no rows; the run has not validated yet")
            last = m.iloc[-1]
            scores.append(last["val_acc"] if "val_acc" in m else -last["val_loss"])
        group = group.assign(final_val=scores, ok=group["status"] != "diverged")
        chosen.append(group.sort_values(["ok", "final_val"], kind="stable",
                                        na_position="first").iloc[-1])
    return pd.DataFrame(chosen).reset_index(drop=True)


def checkpoint_table(run_dirs: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 2-5: test scores at each checkpoint step of the best seed per n."""
    runs = load_runs(run_dirs)
    keys = row_keys(runs)
    rows = []
    for _, best in best_seeds(runs).iterrows():
        run = Path(best["run"])
        test = pd.read_csv(run / "test.csv")
        if best["status"] == "diverged":  # no scores from the divergence on: empty cells
            steps = yaml.safe_load((run / "config.yaml").read_text())["checkpoint_steps"]
            missing = sorted(set(steps) - set(test["step"]))
            test = pd.concat([test, pd.DataFrame({"step": missing, "tasks": 0})])
            test["metric"] = "accuracy" if "val_acc" in metrics(run) else "mse"
        elif test.empty:
            raise ReportError(f"{run}: test.csv has no rows; set checkpoint_steps and "
                              "test_tasks > 0")
        for _, t in test.iterrows():
            rows.append({**{k: best[k] for k in keys}, "seed": best["seed"],
                         "step": int(t["step"]), "metric": t["metric"], "mean": t["mean"],
                         "ci95": t["ci95"], "tasks": int(t["tasks"]), "status": best["status"]})
    return pd.DataFrame(rows), runs


def shots_table(evaluations: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1: test MSE after adaptation on K points, from ``dmaml evaluate --out`` files."""
    results = pd.DataFrame([json.loads(Path(e).read_text()) for e in evaluations])
    runs = load_runs(sorted(set(results["run"])))
    keys = row_keys(runs)
    best = best_seeds(runs)[["run", *keys, "seed", "status"]]
    table = results.merge(best.drop(columns=[k for k in ("shots",) if k in keys]), on="run")
    return table[[*[k for k in keys if k != "shots"], "seed", "shots", "metric", "mean", "ci95",
                  "tasks", "status"]], runs


def markdown(table: pd.DataFrame, column: str, title: str, runs: pd.DataFrame) -> str:
    """The paper's layout: a row per n, a column per ``column`` value, cells 'mean ± ci95'."""
    keys = [k for k in row_keys(runs) if k != column]
    table = table.sort_values([*keys, column])
    cells = table.assign(cell=[("—" if pd.isna(m) else f"{m:.3f} ± {c:.3f}")
                               + (" †" if s == "diverged" else "")
                               for m, c, s in zip(table["mean"], table["ci95"], table["status"])])
    wide = cells.pivot(index=keys, columns=column, values="cell")
    seeds = table.groupby(keys)["seed"].first()
    label = ", ".join(SHORT.get(k, k) for k in keys)
    header = f"| {label} (seed) | " + " | ".join(f"{column} {c}" for c in wide.columns) + " |"
    lines = [f"**{title}**", "", header, "|" + "---|" * (len(wide.columns) + 1)]
    for index, row in wide.iterrows():
        values = ", ".join(map(str, index if isinstance(index, tuple) else (index,)))
        lines.append(f"| {values} ({seeds[index]}) | " + " | ".join(row.fillna("")) + " |")
    metric = table["metric"].iloc[0]
    all_seeds = sorted(set(runs["seed"]))
    lines += ["", f"Cells: test {metric}, mean ± 95% CI over {table['tasks'].max()} test tasks, "
              f"of the seed (of {all_seeds}) with the best validation score after the last step."
              + (" † the run diverged (— : no score after that)."
                 if (table["status"] == "diverged").any() else ""), "",
              f"Configuration: {describe(runs)}."]
    return "\n".join(lines) + "\n"


def write(table: pd.DataFrame, column: str, title: str, runs: pd.DataFrame, out: Path) -> None:
    """Write ``out`` (CSV) and its Markdown twin ``out.with_suffix('.md')`` atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out, table.to_csv(index=False)),
                       (out.with_suffix(".md"), markdown(table, column, title, runs))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
