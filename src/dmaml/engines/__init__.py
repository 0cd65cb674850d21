"""Where the workers of a DMAML run compute: the engine interface and the engine registry.

An engine receives the central parameters, the optimiser states of the workers taking part and
the MAML step at which the run starts; each worker ``w`` applies ``m`` consecutive MAML steps to
its own copy of the parameters, on the tasks of ``task_rng(seed, TRAIN, w, step)`` for each of its
steps, and the engine returns every worker's parameters, optimiser state, mean query loss and
metric. Engines differ only in where that computation happens; for one seed they all give the
numbers of :class:`~dmaml.engines.sequential.SequentialEngine` (to float tolerance).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dmaml.config import RunConfig

if TYPE_CHECKING:  # not at run time: the workflow reads `choose` without TensorFlow
    from dmaml.optimizer import AdamState


@dataclass
class WorkerResult:
    """What one worker returns at the end of a run."""

    params: dict[str, np.ndarray]
    opt_state: AdamState
    loss: float  # mean query loss over the run's MAML steps
    metric: float  # mean query accuracy (classification) or MSE (regression)


class Engine(ABC):
    """Runs the workers of one DMAML run."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.name = cfg.engine  # what run.json records; :func:`create` names what auto chose

    @abstractmethod
    def run(self, theta: dict[str, np.ndarray], states: dict[int, AdamState],
            step: int) -> dict[int, WorkerResult]:
        """Run ``cfg.steps_per_run`` MAML steps for each worker in ``states`` (keyed by index)."""

    def close(self) -> None:
        """Release processes or other resources (nothing by default)."""


def set_threads(threads: int) -> None:
    """Before TensorFlow's runtime starts: ``threads`` intra-op threads, and as many inter-op
    threads (the per-task loop is a graph of small ops, which run side by side on them; with one
    inter-op thread Omniglot 20-way 1-shot took 1.71 s a MAML step instead of 1.10 s)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def cores() -> int:
    """The cores this process may run on (its CPU affinity), which ``choose``, ``dmaml plan``,
    the processes engine and the cluster engine size themselves by."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def choose(cfg: RunConfig, n_cores: int | None = None) -> tuple[str, str]:
    """The engine a run computes with, and why: ``cfg.engine`` when it names one ("set"); for
    ``auto`` what measured fastest on ``n_cores`` cores (default ``cfg.threads``, else
    :func:`cores`), benchmarks/README.md. conv4 workers at least as many as the cores: one
    process per core (``processes``, on an idle 2-core machine 1.3x ``vectorized`` at n = 4 and
    n = 16 on Omniglot 5-way 1-shot, 1.5x on 20-way; a process's second thread mostly waits);
    fewer workers than cores, or sine's small MLP (whose stacked computation beats processes up
    to n = 16): ``vectorized``. ``auto`` never picks ``cluster`` (it needs a Ray cluster) nor
    ``sequential`` (the reference)."""
    if cfg.engine != "auto":
        return cfg.engine, "set"
    if n_cores is None:
        n_cores = cfg.threads or cores()
    on = f"on {n_cores} core{'s' * (n_cores != 1)}"
    n = cfg.workers
    if cfg.dataset == "sine":
        return "vectorized", f"auto: sine's small MLP {on}: all workers in one stacked computation"
    if n < n_cores or n_cores == 1:
        return "vectorized", (f"auto: {n} conv4 worker{'s' * (n != 1)} {on}: one stacked "
                              "computation")
    return "processes", f"auto: {n} conv4 workers {on}: a process per core"


def create(cfg: RunConfig, name: str | None = None) -> Engine:
    """The engine ``name`` (default: :func:`choose`'s for ``cfg``)."""
    name = name or choose(cfg)[0]
    if name == "sequential":
        from dmaml.engines.sequential import SequentialEngine
        engine = SequentialEngine(cfg)
    elif name == "vectorized":
        from dmaml.engines.vectorized import VectorizedEngine
        engine = VectorizedEngine(cfg)
    elif name == "processes":
        from dmaml.engines.processes import ProcessesEngine
        engine = ProcessesEngine(cfg)
    else:
        from dmaml.engines.cluster import ClusterEngine  # config.py admits no other name
        engine = ClusterEngine(cfg)
    engine.name = name
    return engine
