"""A short sweep of the merge strategies' settings, from which their defaults are chosen
(benchmarks/README.md, "Merge strategies"; issue #13, Figure 7).

    python benchmarks/merge_sweep.py --data resources/omniglot.h5   # about 15-20 min on 2 cores

Omniglot 5-way 1-shot with n workers of t tasks each (default n = 8, t = 2, 300 MAML steps, seeds
0 and 1): the paper's ``mean`` merge, ``weighted`` at each ``--temperatures`` value and
``drop_worst`` at each ``--drops`` value, every run in a fresh folder. For each setting: the
validation accuracy (``--val_tasks`` tasks, the same tasks for every run) at the last step and at
its best, the fall from best to last (a diverging run falls), the runs that stopped on non-finite
values, and the seconds per run. Each run's row is appended to ``--out`` (CSV) as it ends; the
Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import tempfile
import time
from pathlib import Path

from dmaml.config import RunConfig, resolve
from dmaml.errors import TrainingDiverged
from dmaml.learner import Learner

COLUMNS = ["merge", "setting", "seed", "final_val_acc", "best_val_acc", "diverged", "seconds"]


def strategies(temperatures: list[float], drops: list[int]) -> list[tuple[str, dict]]:
    """(merge, extra settings) of every line of the sweep, the paper's mean first."""
    return ([("mean", {})]
            + [("weighted", {"merge_temperature": t}) for t in temperatures]
            + [("drop_worst", {"merge_drop": d}) for d in drops])


def train_one(args: argparse.Namespace, merge: str, extra: dict, seed: int, out: Path) -> dict:
    """Train one run and return its row: validation accuracy last and best, diverged or not."""
    cfg = resolve(RunConfig(dataset="omniglot", data=str(args.data), ways=5, shots=1,
                            workers=args.workers, tasks_per_step=args.tasks, steps=args.steps,
                            merge=merge, eval_every=args.eval_every, val_tasks=args.val_tasks,
                            test_tasks=0, checkpoint_steps=[], seed=seed, tensorboard=False,
                            **extra))
    start = time.perf_counter()
    try:
        Learner(cfg, out).train()
        diverged = False
    except TrainingDiverged:
        diverged = True
    with open(out / "metrics.csv") as f:
        accs = [float(r["val_acc"]) for r in csv.DictReader(f)]
    return {"merge": merge, "setting": " ".join(f"{k}={v}" for k, v in extra.items()) or "-",
            "seed": seed, "final_val_acc": accs[-1] if accs and not diverged else float("nan"),
            "best_val_acc": max(accs, default=float("nan")), "diverged": diverged,
            "seconds": round(time.perf_counter() - start, 1)}


def summary(rows: list[dict]) -> str:
    """The Markdown table: one line per setting, means (and spread) over seeds."""
    lines = ["| merge | setting | final val acc (mean, range) | best | best - final | diverged "
             "| s per run |", "|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["merge"], r["setting"]) for r in rows):
        group = [r for r in rows if (r["merge"], r["setting"]) == key]
        final = [r["final_val_acc"] for r in group]
        best = [r["best_val_acc"] for r in group]
        fall = statistics.mean(b - f for b, f in zip(best, final))
        lines.append(f"| {key[0]} | {key[1]} | {statistics.mean(final):.3f} ({min(final):.3f}-"
                     f"{max(final):.3f}) | {statistics.mean(best):.3f} | {fall:.3f} | "
                     f"{sum(r['diverged'] for r in group)}/{len(group)} | "
                     f"{statistics.mean(r['seconds'] for r in group):.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("resources/omniglot.h5"))
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--tasks", type=int, default=2, help="tasks per step of each worker (t)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval_every", type=int, default=50)
    p.add_argument("--val_tasks", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    p.add_argument("--drops", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--out", type=Path, default=Path("merge_sweep.csv"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for merge, extra in strategies(args.temperatures, args.drops):
            for seed in args.seeds:
                out = Path(tmp, f"{merge}-{len(rows)}")
                rows.append(train_one(args, merge, extra, seed, out))
                writer.writerow(rows[-1])
                f.flush()
    print(f"Omniglot 5-way 1-shot, n = {args.workers}, t = {args.tasks}, {args.steps} MAML steps, "
          f"seeds {args.seeds}, {args.val_tasks} validation tasks\n")
    print(summary(rows))


if __name__ == "__main__":
    main()
