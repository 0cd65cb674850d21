"""Figure 7, beyond the paper: the merge strategies of the central learner side by side, one
panel per number of workers n with the runs of n = 1 as the reference, and below each the spread
of the workers' probe scores; its caption says when its runs cannot answer its question.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from dmaml.report import SHORT, listing, load_runs, run_csv
from dmaml.report.figures import (
    figure_caption,
    palette,
    plot_curves,
    points_text,
    save,
    seeds_per_setting,
    settings_note,
)

STRATEGIES = ("mean: the plain average of the workers' parameters (the paper's merge); weighted "
              "T: weights softmax(-(s - min s) / (T std s)) of each worker's probe score s (the "
              "query loss of its returned parameters adapted to training tasks shared by all "
              "workers); drop_worst d: the fraction d of the workers of worst probe score left "
              "out; 'n=k from step s': a worker schedule, k workers from MAML step s on")


def merge_figure(run_dirs, out: Path) -> None:
    """Figure 7 (beyond the paper): validation score vs MAML steps for each merge strategy, one
    panel per number of workers n, with the runs of n = 1 in each panel as the reference."""
    runs = load_runs(run_dirs)
    runs = runs.assign(line=["n = 1 (reference)" if n == 1 else s
                             for n, s in zip(runs["workers"], runs["strategy"])])
    counts = sorted(set(runs["workers"]) - {1}) or [1]
    spreads = probe_spreads(runs)
    rows = 2 if spreads else 1
    fig, axes = plt.subplots(rows, len(counts), figsize=(7 * len(counts), 4.5 + 2.5 * (rows - 1)),
                             squeeze=False, height_ratios=[2, 1][:rows], sharex="col")
    fig.subplots_adjust(hspace=0.3)
    for col, n in enumerate(counts):
        panel = runs[runs["workers"].isin({1, n})]
        plot_curves(axes[0][col], panel, ["line"], lambda v: v[0])
        axes[0][col].set_title(f"Merge strategies at n = {n} workers")
        if spreads:  # the same colour for a strategy in both panels
            axes[0][col].set_xlabel("")
            ax = axes[1][col]
            colors = dict(zip(sorted(set(panel["line"])), palette(panel["line"].nunique())))
            for line, spread in sorted(spreads.get(n, {}).items()):
                smooth = spread.rolling(SMOOTH, min_periods=1).mean()
                ax.plot(smooth.index, smooth.to_numpy(), color=colors[line], lw=1.2, label=line)
            ax.set_xlabel("MAML steps of the central model")
            ax.set_ylabel("probe-score spread")
            ax.set_title("Spread of the workers' probe scores at each merge", fontsize=9)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    strategies = ", ".join(f"'{x}'" for x in sorted(set(runs["strategy"])))
    merged, single = runs[runs["workers"] > 1], runs[runs["workers"] == 1]
    lines = merged if len(merged) else runs
    config = (f"n = {listing(lines['workers'])}, t = {listing(lines['tasks_per_step'])}, "
              f"m = {listing(lines['steps_per_run'])}")
    own = [f"{SHORT[column]} = {listing(single[column])}"
           for column in ("tasks_per_step", "steps_per_run")
           if len(merged) and set(single[column]) - set(merged[column])]
    if own:  # the reference's t and m, where they are not the merged runs'
        config += f" (n = 1: {', '.join(own)})"
    config += f", {listing(runs['steps'])} MAML steps; strategies: {strategies}"
    limits = figure7_limits(runs)
    settings_note(fig, runs, f"{listing(runs['steps'])} MAML steps; {points_text(runs)}\n"
                             f"strategies: {strategies}" + (f"\n{limits}" if limits else ""))
    what = (f"{limits} " if limits else "") + f"{config}. {STRATEGIES}." + (
        f" {SPREAD}." if spreads else "")
    save(fig, out, figure_caption("Figure 7: validation score for each merge strategy of the "
                                  "central learner (the paper's future work: does a smarter merge "
                                  "cure what the mean merge of many workers loses?)", runs, what))


SMOOTH = 20  # merges in the rolling mean of the lower panels (one spread a step is noise)
SPREAD = ("Lower panels: the highest minus the lowest probe score of the workers at each merge "
          f"(weighted and drop_worst; mean over seeds, rolling mean over {SMOOTH} merges): how far "
          "apart the workers the merge judges are")


def probe_spreads(runs: pd.DataFrame) -> dict[int, dict[str, pd.Series]]:
    """For each n, each strategy's spread of worker probe scores by MAML step (from the runs'
    ``worker_scores.csv``, mean over seeds); empty when no run scores its workers."""
    spreads: dict[int, dict[str, pd.Series]] = {}
    for (n, line), group in runs.groupby(["workers", "line"]):
        found = [Path(run) / "worker_scores.csv" for run in group["run"]]
        found = [run_csv(f, key=("step", "worker")) for f in found if f.is_file()]
        found = [f.groupby("step")["score"].agg(lambda s: s.max() - s.min()) for f in found if len(f)]
        if found:
            spreads.setdefault(n, {})[line] = pd.concat(found, axis=1).mean(axis=1).sort_index()
    return spreads


# The paper's divergence (its Section 4.3, Table 2): "after 1,500 MAML steps", at n >= 8, m = 1
DIVERGENCE_STEP, DIVERGENCE_WORKERS = 1500, 8


def figure7_limits(runs: pd.DataFrame) -> str:
    """Why Figure 7's runs cannot answer its question, in one sentence; empty when they can.
    At m = 1 (Table 2's setting) the loss to cure is the paper's divergence, so short runs and few
    workers cannot show it; at m > 1 the mean merge loses from the first steps (docs/results.md)."""
    merged = runs[runs["workers"] > 1]
    reasons = []
    if merged.empty:
        reasons.append("no run merges workers (n = 1 only)")
    elif (merged["steps_per_run"] == 1).all():
        if runs["steps"].max() <= DIVERGENCE_STEP:
            reasons.append(f"{listing(runs['steps'])} MAML steps at m = 1, while the paper's "
                           f"divergence begins after {DIVERGENCE_STEP:,} (its Section 4.3)")
        if merged["workers"].max() < DIVERGENCE_WORKERS:
            reasons.append(f"n = {listing(merged['workers'])} at m = 1, while the paper's Table 2 "
                           f"diverges at n >= {DIVERGENCE_WORKERS} only")
    if merged.empty or seeds_per_setting(merged) < 2:
        reasons.append("one seed per strategy, so strategies cannot be told apart from seed "
                       "luck")
    if not reasons:
        return ""
    return "This figure cannot answer its question: " + "; ".join(reasons) + "."
