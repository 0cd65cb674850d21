"""How the central learner merges the parameters its n workers return after a run.

- ``mean``: the plain average (the paper's choice).
- ``weighted``: weights ``softmax(-loss / T)`` of each worker's mean query loss over the run, so
  workers that fit their tasks better count more (the paper's proposed future work).
- ``drop_worst``: leave out the ``k`` workers with the highest loss and average the rest (at least
  one worker is always kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weights(strategy: str, losses: Sequence[float], temperature: float = 1.0,
            drop: int = 1) -> np.ndarray:
    """The weight of each worker (summing to one) under ``strategy``."""
    losses = np.asarray(losses, np.float64)
    n = len(losses)
    if strategy == "mean":
        w = np.ones(n)
    elif strategy == "weighted":
        z = -losses / temperature
        w = np.exp(z - z.max())
    elif strategy == "drop_worst":
        keep = max(n - drop, 1)
        w = np.zeros(n)
        w[np.argsort(losses, kind="stable")[:keep]] = 1.0
    else:
        raise ValueError(f"unknown merge strategy {strategy!r}")
    return w / w.sum()


def merge(params: Sequence[dict[str, np.ndarray]], w: np.ndarray) -> dict[str, np.ndarray]:
    """The weighted average of workers' parameter dicts."""
    if len(params) == 1:
        return {k: v.copy() for k, v in params[0].items()}
    return {k: np.tensordot(w.astype(np.float32), np.stack([p[k] for p in params]), axes=1)
            for k in params[0]}
