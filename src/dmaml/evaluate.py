"""Adapt-and-test evaluation: mean and 95% confidence interval over a fixed set of tasks.

The tasks of a split are drawn from ``task_rng(eval_seed, stream)``, so every run of a dataset
setting is evaluated on the same tasks. The interval is ``1.96 * std / sqrt(tasks)`` with the
population standard deviation, as in the original MAML code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from dmaml import maml
from dmaml.models import Model
from dmaml.tasks import STREAMS, Sampler, task_rng


@dataclass(frozen=True)
class Score:
    """Mean and 95% interval of the per-task metric, with the mean query loss."""

    mean: float
    ci95: float
    loss: float
    tasks: int


class Evaluator:
    """Evaluates parameters on ``tasks`` fixed tasks of one split after ``steps`` adaptation steps."""

    def __init__(self, model: Model, sampler: Sampler, split: str, tasks: int, eval_seed: int,
                 alpha: float, steps: int):
        self.sampler, self.stream, self.count, self.seed = sampler, STREAMS[split], tasks, eval_seed
        self.fn = maml.make_task_evaluator(model, alpha, steps)

    def __call__(self, params: dict[str, np.ndarray]) -> Score:
        # Tasks are drawn again on each call (same generator, same tasks): 600 miniImageNet tasks
        # would take gigabytes to keep.
        rng = task_rng(self.seed, self.stream)
        results = np.array([[float(v) for v in self.fn(params, *self.sampler.sample(rng))]
                            for _ in range(self.count)])
        losses, metrics = results[:, 0], results[:, 1]
        n = len(metrics)
        return Score(float(metrics.mean()), float(1.96 * metrics.std() / np.sqrt(n)),
                     float(losses.mean()), n)



def extrapolation(model: Model, params: dict[str, np.ndarray], shots: int, alpha: float,
                  steps: int, eval_seed: int, points: int = 200) -> dict[str, np.ndarray]:
    """Figure 2: adapt on ``shots`` points drawn from the left half [-5, 0] of a fixed sine task,
    then predict over the whole range [-5, 5]. Returns x, the true and the predicted y, and the
    support points."""
    from dmaml.tasks import TEST, SineSampler

    sampler = SineSampler(shots, 1, support_range=(-5.0, 0.0))
    a, b = sampler.function(task_rng(eval_seed, TEST, 1))
    xs = sampler.points(task_rng(eval_seed, TEST, 2), shots, sampler.support_range)
    x = np.linspace(*SineSampler.x_range, points, dtype=np.float32)[:, None]
    params = {k: tf.constant(v) for k, v in params.items()}
    adapted = maml.adapt(model, params, xs, SineSampler.curve(a, b, xs), alpha, steps)
    return {"x": x[:, 0], "y_true": SineSampler.curve(a, b, x)[:, 0],
            "y_pred": model.apply(adapted, x).numpy()[:, 0], "support_x": xs[:, 0],
            "support_y": SineSampler.curve(a, b, xs)[:, 0]}
