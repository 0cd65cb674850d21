"""How the central learner merges the parameters its n workers return after a run.

- ``mean``: the plain average (the paper's choice). Nothing is scored; the run's numbers are
  those of the paper's algorithm.
- ``weighted`` and ``drop_worst`` (the paper's future work, "drop the parameters of
  underperforming workers") judge each worker by what it returns: its parameters after the run
  are adapted to the same ``merge_probe_tasks`` **probe tasks** as at validation
  (``eval_inner_steps`` steps of ``alpha``) and scored by their mean query loss after adaptation
  (lower is better). The probe tasks come from the training classes, drawn from a stream of
  their own (``task_rng(seed, PROBE, step)``, the step at which the run starts): the same tasks
  for every worker of a run, other tasks at the next run, none of the validation or test tasks.
  (Each worker's own training loss would not do: with m = 1 every worker starts from the same
  theta, so its loss before the update only says how hard the tasks it drew were.)
- ``weighted``: weights ``softmax(-(s - min s) / (T * std s))`` of the scores ``s``. The
  temperature is relative to the spread of the scores, so that ``T`` means the same at any
  scale of loss and any t: a worker one standard deviation of the scores worse than the best
  counts ``exp(-1/T)`` times as much. All scores equal (or n = 1): the mean.
- ``drop_worst``: leave out the ``floor(merge_drop * n)`` workers of highest score (a fraction,
  so that it means the same at n = 4 and n = 32; at least one worker is always kept) and
  average the rest.

Cost: probing evaluates n x ``merge_probe_tasks`` tasks per run (3 adaptation steps each on
Omniglot) beside the run's n x t x m training tasks, in the learner's process. At Table 2's
setting (Omniglot 5-way 1-shot, n = 16, t = 32, m = 1, 16 probe tasks, 2 cores) it took 36% of the
run's time (713 of 1,965 s over 20 MAML steps; the training alone 1,252 s, so probing adds 57%);
at presets/fig7-local-steps.yaml's (n = 16, t = 2, m = 50) 16-18%. The fraction hardly depends on
n (both grow with it); it grows with the probe tasks and falls with t and m: 8 probe tasks cost
about half as much.

The defaults (T = 1, merge_drop = 0.25, 16 probe tasks), the sweep that chose them and one at
presets/fig7-local-steps.yaml's setting: benchmarks/README.md, "Merge strategies".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def dropped(n: int, fraction: float) -> int:
    """How many of ``n`` workers ``drop_worst`` leaves out: ``floor(fraction * n)``, at most
    ``n - 1``."""
    return min(math.floor(fraction * n + 1e-9), n - 1)  # 1e-9: 0.7 * 10 is 7.000000000000001


def weights(strategy: str, scores: Sequence[float], temperature: float = 1.0,
            drop: float = 0.25) -> np.ndarray:
    """The weight of each worker (summing to one) under ``strategy``, from the workers' probe
    ``scores`` (lower is better; ``mean`` reads only how many there are)."""
    scores = np.asarray(scores, np.float64)
    n = len(scores)
    spread = scores.std() if n else 0.0
    if strategy == "mean" or (strategy == "weighted" and not spread > 0):
        w = np.ones(n)
    elif strategy == "weighted":
        w = np.exp(-(scores - scores.min()) / (temperature * spread))
    elif strategy == "drop_worst":
        w = np.zeros(n)
        w[np.argsort(scores, kind="stable")[:n - dropped(n, drop)]] = 1.0
    else:
        raise ValueError(f"unknown merge strategy {strategy!r}")
    return w / w.sum()


def merge(params: Sequence[dict[str, np.ndarray]], w: np.ndarray) -> dict[str, np.ndarray]:
    """The weighted average of workers' parameter dicts."""
    if len(params) == 1:
        return {k: v.copy() for k, v in params[0].items()}
    return {k: np.tensordot(w.astype(np.float32), np.stack([p[k] for p in params]), axes=1)
            for k in params[0]}
