"""The ablation: which of the choices the paper leaves open explain its numbers.

Each **arm** is a set of run folders (the seeds of one workflow experiment) that differs from our
defaults in a few settings (:data:`CHOICES`). The table gives each arm's test scores at each
checkpoint step, every seed's, beside the paper's Table 2 cell and the project's verdict
(:func:`dmaml.report.paper.verdict`: ``=``, ``better``, ``worse``, judged on every seed). An arm
is compared with the paper's cell of the same number of tasks per MAML step, n·t / 32 workers of
the paper's t = 32, so that one worker with all 512 tasks (a central Adam) faces the paper's
n = 16. The figure shows the arms' validation curves, one colour per arm, with the paper's test
values as points.

Run it as ``python -m dmaml.report.ablation NAME=RUN_DIR... --paper workflow/paper/tables.csv
--out results/tables/ablation.csv``; the figure goes beside the table as ``ablation.png``
unless ``--figure`` says where.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from dmaml import atomic  # noqa: E402
from dmaml.config import RunConfig, resolve  # noqa: E402
from dmaml.errors import UserError  # noqa: E402
from dmaml.report import counts, describe, listing, metrics  # noqa: E402
from dmaml.report.figures import palette, save  # noqa: E402
from dmaml.report.paper import RULE, compare, load_paper  # noqa: E402
from dmaml.report.tables import SEED_SCORES, cell, checkpoint_table  # noqa: E402

# the settings an arm may change (docs/design.md, "Choices the paper leaves open")
CHOICES = ["tasks_per_step", "alpha", "beta", "first_order", "batch_norm", "features", "adam_state",
           "pixels",
           "outer_reduction", "inner_steps", "eval_inner_steps"]
PAPER_T = 32  # the paper's tasks per MAML step in Table 2
PAPER_TABLE = "table2"


def changes(run: pd.Series) -> str:
    """The settings of a run (a row of :func:`~dmaml.report.load_runs`) that differ from our
    defaults for its dataset, as ``alpha=2.0, batch_norm=frozen``; ``default`` where none does."""
    ours = resolve(RunConfig(dataset=run["dataset"], data="-"))
    moved = [f"{k}={run[k]}" for k in CHOICES if run[k] != getattr(ours, k)]
    return ", ".join(moved) or "default"


def ablation_table(arms: dict[str, list[Path]],
                   paper: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per arm, worker count and checkpoint step: the chosen seed's test score and every
    seed's (:data:`~dmaml.report.tables.SEED_SCORES`), their mean, the paper's Table 2 cell of
    the same tasks per step with the difference and verdict; and the runs, with their arm."""
    frames, every_run = [], []
    for arm, dirs in arms.items():
        cells, runs = checkpoint_table(dirs)
        ours = cells["workers"]
        cells = compare(cells.assign(workers=ours * cells["tasks_per_step"] // PAPER_T), paper,
                        PAPER_TABLE)
        cells = cells.rename(columns={"workers": "paper_workers"}).assign(workers=ours.to_numpy())
        cells.insert(0, "arm", arm)
        cells.insert(1, "changes", changes(runs.iloc[0]))
        cells["seed_mean"] = [pd.Series([m for _, m, _ in x]).mean() for x in cells[SEED_SCORES]]
        frames.append(cells)
        every_run.append(runs.assign(arm=arm))
    return pd.concat(frames, ignore_index=True), pd.concat(every_run, ignore_index=True)


def markdown(table: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The table as Markdown: a line per arm, n and step, with its notes."""
    lines = ["**Ablation: the choices the paper leaves open, against its Table 2**", "",
             "| arm | changes | n | t | step | ours, each seed (mean ± 95% CI) | mean of seeds "
             "| paper (n) | ours - paper | verdict |", "|" + "---|" * 10]
    for _, r in table.sort_values(["workers", "step"], kind="stable").iterrows():
        seeds = " / ".join(f"{cell(m, c)}" if m == m else "—" for _, m, c in r[SEED_SCORES])
        has_paper = r["paper_mean"] == r["paper_mean"]
        lines.append(
            f"| {r['arm']} | {r['changes']} | {r['workers']} | {r['tasks_per_step']} | "
            f"{r['step']} | {seeds} | {r['seed_mean']:.3f} | "
            + (f"{r['paper_mean']} (n = {r['paper_workers']})" if has_paper else "—")
            + f" | {r['difference'] or '—'} | {r['verdict']} |")
    lines += ["", f"Seeds: {listing(runs['seed'])}; test tasks: {listing(table['tasks'])} per cell "
              "(mean ± 95% CI, 1.96·SD/√tasks). The paper's cell is Table 2's at n·t / 32 "
              "workers (its t = 32), so that one worker with 512 tasks per step faces its "
              f"n = 16. {RULE} Against the paper: {counts(table['verdict'])}.", "",
              f"Configuration: {describe(runs)}.", ""]
    return "\n".join(lines)


def figure(table: pd.DataFrame, runs: pd.DataFrame, paper: pd.DataFrame, out: Path) -> None:
    """The arms' validation accuracy (mean over seeds, one colour per arm) and, in black, the
    paper's Table 2 test values at the n each arm is compared with (one marker per n)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    groups = list(runs.groupby(["arm", "workers", "tasks_per_step"], sort=False))
    last = 0
    for color, ((arm, n, t), group) in zip(palette(len(groups)), groups):
        curves = pd.concat([metrics(r).set_index("step")["val_acc"] for r in group["run"]], axis=1)
        ax.plot(curves.index, curves.mean(axis=1), color=color, lw=1.6,
                label=f"{arm}: n = {n}, t = {t} ({len(group)} seed{'s' * (len(group) > 1)})")
        last = max(last, curves.index.max())
    compared = sorted({n * t // PAPER_T for _, n, t in (g for g, _ in groups)})
    for marker, paper_n in zip("xo^sv", compared):
        cells = paper[(paper["table"] == PAPER_TABLE) & (paper["workers"] == paper_n)]
        cells = cells[cells["step"] <= last]
        ax.plot(cells["step"], cells["mean"].astype(float), marker, color="black", ms=8, mew=2,
                ls=":", lw=1, mfc="none", label=f"paper, n = {paper_n} (test, Table 2)")
    ax.set_xlabel("MAML steps of the central model")
    ax.set_ylabel("validation accuracy (mean over seeds)")
    ax.set_title("Ablation: validation accuracy of each arm beside the paper's Table 2")
    ax.legend(fontsize=7)
    fig.text(0.01, 0, f"Omniglot {listing(runs['ways'])}-way {listing(runs['shots'])}-shot; "
             f"validation on {listing(runs['val_tasks'])} fixed tasks; seeds "
             f"{listing(runs['seed'])}", fontsize=7, va="top")
    save(fig, out, "Ablation: each arm's validation accuracy (mean over its seeds; line colour "
         "per arm) and, in black, the paper's Table 2 test values at the n they are compared with. "
         f"Configuration: {describe(runs)}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmaml.report.ablation",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("arms", nargs="+", metavar="NAME=RUN_DIR",
                        help="a run folder of an arm (repeat the name for each seed)")
    parser.add_argument("--paper", required=True, help="the paper's values (tables.csv)")
    parser.add_argument("--out", required=True, type=Path, help="the table's CSV; .md beside")
    parser.add_argument("--figure", type=Path, help="the figure [default: beside --out, .png]")
    args = parser.parse_args(argv)
    arms: dict[str, list[Path]] = {}
    for item in args.arms:
        name, sep, run = item.partition("=")
        if not sep or not name or not run:
            parser.error(f"{item!r}: give each run as NAME=RUN_DIR")
        arms.setdefault(name, []).append(Path(run))
    try:
        paper = load_paper(args.paper)
        table, runs = ablation_table(arms, paper)
        atomic.write_text(args.out, table.drop(columns=SEED_SCORES).assign(
            seed_scores=[repr(x) for x in table[SEED_SCORES]]).to_csv(index=False))
        atomic.write_text(args.out.with_suffix(".md"), markdown(table, runs))
        figure(table, runs, paper, args.figure or args.out.with_suffix(".png"))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
