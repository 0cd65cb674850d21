"""Adapt-and-test evaluation: mean and 95% confidence interval over a fixed set of tasks.

The tasks of a split are drawn from ``task_rng(eval_seed, stream)``, so every run of a dataset
setting is evaluated on the same tasks. (The merges' probe, :mod:`dmaml.merge`, passes a stream
of its own and the run's step as further indices: other tasks at each run.) The interval is
``1.96 * std / sqrt(tasks)`` with the population standard deviation, as in the original MAML
code.

Tasks are adapted and tested in batches (one XLA computation per batch, the model's ``batched``
function), as many at once as fit in :data:`MEMORY_BUDGET`; the last batch is padded with copies
of its first task so that one compiled shape serves every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from dmaml import maml
from dmaml.models import Model
from dmaml.tasks import STREAMS, Sampler, task_rng

MEMORY_BUDGET = 2**30  # bytes of activations one batch of evaluation tasks may hold


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
                 alpha: float, steps: int, batch: int | None = None, stream: int | None = None):
        """``batch``: tasks per compiled call (default: as many as fit in the memory budget);
        ``stream``: the RNG stream of the tasks (default: the split's)."""
        self.sampler, self.count, self.seed = sampler, tasks, eval_seed
        self.stream = STREAMS[split] if stream is None else stream
        model = model.for_evaluation()  # batch_norm: running normalises with its moving statistics
        self.fn = maml.make_batch_evaluator(model, alpha, steps)
        self.model, self.batch = model, batch

    def _batch_size(self, task) -> int:
        # The support pass keeps its activations for the inner gradient (about three copies
        # with the gradient's), the query pass is forward only.
        examples = 3 * len(task[0]) + 2 * len(task[2])
        size = MEMORY_BUDGET // max(1, 4 * self.model.activations * examples)
        return int(min(max(size, 1), self.count))

    def __call__(self, params: dict[str, np.ndarray], *indices: int) -> Score:
        """Adapt ``params`` to each task and score it; ``indices`` select other tasks
        (``task_rng(eval_seed, stream, *indices)``)."""
        # Tasks are drawn again on each call (same generator, same tasks): 600 miniImageNet tasks
        # would take gigabytes to keep.
        rng = task_rng(self.seed, self.stream, *indices)
        losses, metrics = [], []
        while len(losses) < self.count:
            first = self.sampler.sample(rng)
            batch = self.batch or self._batch_size(first)
            size = min(batch, self.count - len(losses))
            tasks = [first, *(self.sampler.sample(rng) for _ in range(size - 1))]
            tasks += [first] * (batch - size)
            loss, metric = self.fn(params, *(np.stack(part) for part in zip(*tasks)))
            losses += loss.numpy()[:size].tolist()
            metrics += metric.numpy()[:size].tolist()
        losses, metrics = np.array(losses, np.float64), np.array(metrics, np.float64)
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
