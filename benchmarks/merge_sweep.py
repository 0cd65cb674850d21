"""A short sweep of the merge strategies' settings, from which their defaults are chosen
(benchmarks/README.md, "Merge strategies"; Figure 7).

    python benchmarks/merge_sweep.py --data resources/omniglot.h5   # about 30 min on 2 cores

Omniglot 5-way 1-shot with n workers of t tasks each, m MAML steps per run and outer step size
beta (default: Table 2's n = 16, t = 32, m = 1, Table 6's beta; presets/fig7-local-steps.yaml's is
``--tasks 2 --steps_per_run 50``; 100 MAML steps, seed 0): the paper's ``mean`` merge,
``weighted`` at each ``--temperatures`` value (relative to the spread of the workers' probe
scores) and ``drop_worst`` at each ``--drops`` fraction, every run in a fresh folder (kept under
``--runs`` if given). For each setting: the validation accuracy (``--val_tasks`` tasks, the same
tasks for every run) at the last step and at its best, the fall from best to last (a diverging run
falls), the runs that stopped on non-finite values; the spread of the workers' probe scores (their
standard deviation within a run, then its mean over runs, beside the mean score), the effective
number of workers merged (1 / sum of squared weights, averaged over runs: n for the mean), and the
seconds of the whole training and of its probing. Each run's row is appended to ``--out`` (CSV) as
it ends; the Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

from dmaml.config import RunConfig, resolve
from dmaml.errors import TrainingDiverged
from dmaml.learner import Learner

COLUMNS = ["merge", "setting", "seed", "final_val_acc", "best_val_acc", "diverged", "score_mean",
           "score_sd", "effective_workers", "seconds", "probe_seconds"]


def strategies(temperatures: list[float], drops: list[float],
               merges: tuple[str, ...] = ("mean", "weighted", "drop_worst")) -> list[tuple[str, dict]]:
    """(merge, extra settings) of every line of the sweep, in the order of ``merges``."""
    lines = {"mean": [("mean", {})],
             "weighted": [("weighted", {"merge_temperature": t}) for t in temperatures],
             "drop_worst": [("drop_worst", {"merge_drop": d}) for d in drops]}
    return [line for merge in merges for line in lines[merge]]


def train_one(args: argparse.Namespace, merge: str, extra: dict, seed: int, out: Path) -> dict:
    """Train one run and return its row: validation accuracy last and best, diverged or not."""
    cfg = resolve(RunConfig(dataset="omniglot", data=str(args.data), ways=5, shots=1,
                            workers=args.workers, tasks_per_step=args.tasks, steps=args.steps,
                            steps_per_run=args.steps_per_run, beta=args.beta,
                            merge=merge, eval_every=args.eval_every, val_tasks=args.val_tasks,
                            test_tasks=0, checkpoint_steps=[], seed=seed, tensorboard=False,
                            merge_probe_tasks=args.probe_tasks, **extra))
    start = time.perf_counter()
    try:
        Learner(cfg, out).train()
        diverged = False
    except TrainingDiverged:
        diverged = True
    seconds = round(time.perf_counter() - start, 1)
    with open(out / "metrics.csv") as f:
        accs = [float(r["val_acc"]) for r in csv.DictReader(f)]
    runs = scored_runs(out / "worker_scores.csv")
    return {"merge": merge, "setting": " ".join(f"{k}={v}" for k, v in extra.items()) or "-",
            "seed": seed, "final_val_acc": accs[-1] if accs and not diverged else float("nan"),
            "best_val_acc": max(accs, default=float("nan")), "diverged": diverged,
            "score_mean": mean_of(runs, lambda s, w: statistics.fmean(s)),
            "score_sd": mean_of(runs, lambda s, w: statistics.pstdev(s)),
            "effective_workers": mean_of(runs, lambda s, w: 1 / sum(x * x for x in w))
            if runs else float(args.workers),
            "seconds": seconds,
            "probe_seconds": json.loads((out / "run.json").read_text()).get("probe_s", 0.0)}


def scored_runs(path: Path) -> list[tuple[list[float], list[float]]]:
    """(scores, weights) of each run in a run folder's worker_scores.csv (none for mean)."""
    if not path.exists():
        return []
    runs: dict[str, tuple[list[float], list[float]]] = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            scores, weights = runs.setdefault(r["step"], ([], []))
            scores.append(float(r["score"]))
            weights.append(float(r["weight"]))
    return list(runs.values())


def mean_of(runs: list, statistic) -> float:
    """The mean over runs of ``statistic(scores, weights)`` (nan without runs)."""
    return statistics.fmean(statistic(*run) for run in runs) if runs else float("nan")


def summary(rows: list[dict]) -> str:
    """The Markdown table: one line per setting, means (and spread) over seeds."""
    lines = ["| merge | setting | final val acc (mean, range) | best | best - final | diverged "
             "| probe score (sd within a run) | effective workers | s per training (probing) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["merge"], r["setting"]) for r in rows):
        group = [r for r in rows if (r["merge"], r["setting"]) == key]
        final = [r["final_val_acc"] for r in group]
        best = [r["best_val_acc"] for r in group]
        fall = statistics.mean(b - f for b, f in zip(best, final))
        lines.append(f"| {key[0]} | {key[1]} | {statistics.mean(final):.3f} ({min(final):.3f}-"
                     f"{max(final):.3f}) | {statistics.mean(best):.3f} | {fall:.3f} | "
                     f"{sum(r['diverged'] for r in group)}/{len(group)} | "
                     f"{statistics.mean(r['score_mean'] for r in group):.3f} "
                     f"({statistics.mean(r['score_sd'] for r in group):.3f}) | "
                     f"{statistics.mean(r['effective_workers'] for r in group):.1f} | "
                     f"{statistics.mean(r['seconds'] for r in group):.0f} "
                     f"({statistics.mean(r['probe_seconds'] for r in group):.0f}) |")
    return "\n".join(lines)


def strength(folders: list[Path], temperatures: list[float]) -> str:
    """How strong each temperature would be on the probe scores the weighted and drop_worst runs
    recorded (weights are a function of the scores alone): the effective number of workers and
    the largest weight, averaged over runs."""
    from dmaml import merge

    runs = [run for folder in folders for run in scored_runs(folder / "worker_scores.csv")]
    if not runs:
        return ""
    lines = [f"Strength on the {len(runs)} scored runs' probe scores (mean score sd within a run "
             f"{mean_of(runs, lambda s, w: statistics.pstdev(s)):.3f}, range "
             f"{mean_of(runs, lambda s, w: max(s) - min(s)):.3f}):\n",
             "| weighted T | effective workers | largest weight |", "|---|---|---|"]
    for t in temperatures:
        ws = [merge.weights("weighted", s, t) for s, _ in runs]
        lines.append(f"| {t:g} | {statistics.fmean(1 / float((w * w).sum()) for w in ws):.1f} | "
                     f"{statistics.fmean(float(w.max()) for w in ws):.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("resources/omniglot.h5"))
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--tasks", type=int, default=32, help="tasks per step of each worker (t)")
    p.add_argument("--steps_per_run", type=int, default=1, help="m, MAML steps per run")
    p.add_argument("--beta", type=float, help="outer step size (default: Table 6's)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval_every", type=int, default=50)
    p.add_argument("--val_tasks", type=int, default=100)
    p.add_argument("--probe_tasks", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 2.0])
    p.add_argument("--drops", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--merges", nargs="+", default=["mean", "weighted", "drop_worst"],
                   choices=["mean", "weighted", "drop_worst"], help="strategies, in this order")
    p.add_argument("--out", type=Path, default=Path("merge_sweep.csv"))
    p.add_argument("--runs", type=Path, help="keep the run folders here (default: temporary)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open(args.out, "w", newline="") as f:
        tmp = args.runs or tmp
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for merge, extra in strategies(args.temperatures, args.drops, args.merges):
            for seed in args.seeds:
                out = Path(tmp, f"{merge}-{len(rows)}")
                rows.append(train_one(args, merge, extra, seed, out))
                writer.writerow(rows[-1])
                f.flush()
    beta = f", beta = {args.beta:g}" if args.beta is not None else ""
    print(f"Omniglot 5-way 1-shot, n = {args.workers}, t = {args.tasks}, m = {args.steps_per_run}"
          f"{beta}, {args.steps} MAML steps, seeds {args.seeds}, {args.val_tasks} validation "
          f"tasks, {args.probe_tasks} probe tasks\n")
    print(summary(rows))
    if args.runs:
        print("\n" + strength(sorted(args.runs.iterdir()), [0.25, 0.5, 1.0, 2.0, 4.0]))


if __name__ == "__main__":
    main()
