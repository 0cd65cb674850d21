"""All workers, and the tasks of each, in one XLA computation on one machine.

What ``engine: auto`` picks for sine, and for fewer convolutional workers than cores (or one core)
(:func:`dmaml.engines.choose`), and what each process of the ``processes`` and ``cluster``
engines runs for its share of the workers.

The n workers' parameters and Adam moments are stacked along a leading worker axis, every task of
every worker is one instance of the model's ``batched`` function, and one compiled call
(:func:`dmaml.maml.make_stacked_step`) makes one MAML step of all of them. Convolutions with a
kernel per instance are im2col plus a batched matmul (``models.conv3x3_batched``); batch norm takes
its moments per instance. Per MAML step this is one launch sequence instead of n x t small ones,
and XLA fuses batch norm's element-wise ops, which dominate the per-task loop of the sequential
engine on small images.

Where batching does not pay, the engine runs each worker's step as the sequential engine does,
with native convolutions: for the miniImageNet model (``Model.batch_tasks`` false: its 84x84
feature maps make the im2col patches cost more memory traffic than they save; measured 2.6 s
against 1.5 s per MAML step), and for tasks of more than ``Model.batch_examples`` examples (e.g.
Omniglot 20-way 1-shot, 5-way 5-shot: 2.2x faster per task than batched), whose per-task batches
keep native convolutions efficient.

Inside the computation each stack takes its tasks in equal parts, in a loop that sums their
gradients (``maml.meta_gradient_in_parts``), each part holding about ``PART_BYTES`` of activations:
memory stays bounded however many tasks a step has, and the parts run faster than all tasks at once
(their activations stay in cache; measured below). Workers that do not fit in ``memory_budget``
even one task each are run in consecutive chunks of equal size.
While one chunk computes, a thread draws the tasks of the next (tasks are pure functions of their
seed, so the order of drawing changes nothing).

The numbers equal the sequential engine's to float32 round-off: the same maths, with sums taken in
another order (tests/test_engines.py says how close, and why no closer).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from dmaml import maml, models, optimizer
from dmaml.config import RunConfig
from dmaml.engines import Engine, WorkerResult
from dmaml.engines.sequential import SequentialEngine
from dmaml.optimizer import AdamState
from dmaml.tasks import TRAIN, make_sampler, sample_batch, task_rng

MEMORY_BUDGET = 4 * 2**30  # bytes of activations one compiled call may hold
# Bytes of activations one pass of the task loop should hold (``maml.meta_gradient_in_parts``).
# Omniglot 5-way 1-shot, n = 1, t = 32, 2 cores: parts of 32/16/8/4/2/1 tasks (450 MB to 14 MB)
# took 0.168/0.158/0.159/0.154/0.206/0.222 s per MAML step; a part of 4 tasks (57 MB) also cut
# the process's resident memory after compilation from 1.41 to 1.12 GB.
PART_BYTES = 64 * 2**20
# Bytes held per float of ``Model.activations`` per example pass, in a second-order step (values
# kept for the backward pass, their gradients, the second-order pass's, and XLA's temporaries).
BYTES_PER_ACTIVATION = 4 * 6


def task_bytes(model: models.Model, cfg: RunConfig) -> int:
    """Estimated activation memory of one task in a MAML step of the vectorized engine."""
    passes = cfg.ways * cfg.shots * max(cfg.inner_steps, 1) + cfg.ways * cfg.queries
    return passes * model.activations * BYTES_PER_ACTIVATION


def task_parts(workers: int, tasks: int, bytes_per_task: int,
                part_bytes: int = PART_BYTES) -> int:
    """Parts of the task axis for one compiled call: the fewest that divide ``tasks`` and keep a
    part of all ``workers`` under ``part_bytes`` (one task per part if none does)."""
    return next((c for c in range(1, tasks + 1)
                 if tasks % c == 0 and workers * (tasks // c) * bytes_per_task <= part_bytes),
                tasks)


def release_free_memory() -> None:
    """Give memory freed inside the process back to the system (glibc keeps it for reuse).

    After XLA compiles a step this is some 250 MB a process (Omniglot 5-way 1-shot), which
    would otherwise stay counted against every worker process and Ray actor for the whole run."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to release
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class VectorizedEngine(Engine):
    """All workers of a run as one stacked computation (see the module docstring)."""

    def __init__(self, cfg: RunConfig, memory_budget: int = MEMORY_BUDGET,
                 part_bytes: int = PART_BYTES):
        super().__init__(cfg)
        self.part_bytes = part_bytes
        self.model = models.for_config(cfg)
        examples = cfg.ways * (cfg.shots + cfg.queries)
        batched = self.model.batch_tasks and examples <= self.model.batch_examples
        self.per_task = None if batched else SequentialEngine(cfg)
        self.compiling = True  # whether a step was compiled since memory was last released
        if self.per_task is not None:
            return
        self.sampler = make_sampler(cfg, "train")
        self.task_bytes = task_bytes(self.model, cfg)
        # A call holds at least one task of each of its workers at a time.
        self.chunk = max(1, memory_budget // self.task_bytes)
        self.steps: dict[int, Callable] = {}  # compiled steps by number of task parts
        self.prefetch = ThreadPoolExecutor(1, thread_name_prefix="dmaml-tasks")

    def step_fn(self, workers: int) -> Callable:
        """The compiled MAML step for a stack of ``workers`` workers."""
        cfg = self.cfg
        parts = task_parts(workers, cfg.tasks_per_step, self.task_bytes, self.part_bytes)
        if parts not in self.steps:
            self.steps[parts] = maml.make_stacked_step(
                self.model, cfg.alpha, cfg.inner_steps, cfg.beta, cfg.first_order,
                cfg.outer_reduction, parts)
            self.compiling = True
        return self.steps[parts]

    def chunks(self, states: dict[int, AdamState]) -> list[list[int]]:
        """The workers of each compiled call: those with the same Adam step count (the stacked
        update shares it), split into near-equal parts of at most ``self.chunk`` workers (so at
        most two shapes are compiled)."""
        by_count: dict[float, list[int]] = {}
        for w, state in states.items():
            by_count.setdefault(float(state.t), []).append(w)
        parts = []
        for workers in by_count.values():
            count = math.ceil(len(workers) / self.chunk)
            size, extra = divmod(len(workers), count)
            bounds = np.cumsum([0] + [size + (i < extra) for i in range(count)])
            parts += [workers[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return parts

    def _tasks(self, workers: list[int], step: int) -> tuple[np.ndarray, ...]:
        cfg = self.cfg
        batches = [sample_batch(self.sampler, task_rng(cfg.seed, TRAIN, w, step),
                                cfg.tasks_per_step) for w in workers]
        return tuple(np.stack(parts) for parts in zip(*batches))

    def _prefetched(self, jobs: list[tuple[list[int], int]]):
        """The tasks of each ``(workers, step)`` job in turn, drawing the next job's in a thread
        while the caller computes on the current one."""
        pending = self.prefetch.submit(self._tasks, *jobs[0])
        for job in jobs[1:]:
            current = pending.result()
            pending = self.prefetch.submit(self._tasks, *job)
            yield current
        yield pending.result()

    def run(self, theta, states, step):
        results = (self.per_task.run(theta, states, step) if self.per_task is not None
                   else self._run_stacked(theta, states, step))
        if self.compiling:
            release_free_memory()
            self.compiling = False
        return results

    def _run_stacked(self, theta, states, step) -> dict[int, WorkerResult]:
        m = self.cfg.steps_per_run
        chunks = self.chunks(states)
        tasks = self._prefetched([(workers, s) for workers in chunks
                                  for s in range(step, step + m)])
        results = {}
        for workers in chunks:
            params, state = self._stack(theta, [states[w] for w in workers])
            step_fn = self.step_fn(len(workers))
            losses, metrics = [], []
            for _ in range(m):
                params, state, loss, metric = step_fn(params, state, *next(tasks))
                losses.append(loss.numpy())
                metrics.append(metric.numpy())
            results.update(self._unstack(workers, params, state, losses, metrics))
        return results

    @staticmethod
    def _stack(theta: dict[str, np.ndarray], states: list[AdamState]) -> tuple[dict, AdamState]:
        n = len(states)
        params = {k: tf.constant(np.broadcast_to(v, (n, *v.shape))) for k, v in theta.items()}
        state = AdamState({k: tf.constant(np.stack([s.m[k] for s in states])) for k in theta},
                          {k: tf.constant(np.stack([s.v[k] for s in states])) for k in theta},
                          tf.constant(states[0].t, tf.float32))
        return params, state

    @staticmethod
    def _unstack(workers: list[int], params, state: AdamState, losses: list[np.ndarray],
                 metrics: list[np.ndarray]) -> dict[int, WorkerResult]:
        params = {k: v.numpy() for k, v in params.items()}
        state = optimizer.to_numpy(state)
        # Means over the run's steps in float64, as the sequential engine takes them.
        loss = np.mean(np.asarray(losses, np.float64), axis=0)
        metric = np.mean(np.asarray(metrics, np.float64), axis=0)
        return {w: WorkerResult({k: v[i] for k, v in params.items()},
                                AdamState({k: v[i] for k, v in state.m.items()},
                                          {k: v[i] for k, v in state.v.items()}, state.t),
                                float(loss[i]), float(metric[i]))
                for i, w in enumerate(workers)}

    def close(self) -> None:
        if self.per_task is None:
            self.prefetch.shutdown(wait=True)
