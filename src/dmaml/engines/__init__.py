"""Where the workers of a DMAML run compute: the engine interface and the engine registry.

An engine receives the central parameters, the optimiser states of the workers taking part and
the MAML step at which the run starts; each worker ``w`` applies ``m`` consecutive MAML steps to
its own copy of the parameters, on the tasks of ``task_rng(seed, TRAIN, w, step)`` for each of its
steps, and the engine returns every worker's parameters, optimiser state, mean query loss and
metric. Engines differ only in where that computation happens; for one seed they all give the
numbers of :class:`~dmaml.engines.sequential.SequentialEngine` (to float tolerance).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from dmaml.config import RunConfig
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


def create(cfg: RunConfig) -> Engine:
    """The engine named by ``cfg.engine``."""
    if cfg.engine == "sequential":
        from dmaml.engines.sequential import SequentialEngine
        return SequentialEngine(cfg)
    if cfg.engine == "vectorized":
        from dmaml.engines.vectorized import VectorizedEngine
        return VectorizedEngine(cfg)
    if cfg.engine == "processes":
        from dmaml.engines.processes import ProcessesEngine
        return ProcessesEngine(cfg)
    from dmaml.engines.cluster import ClusterEngine  # config.py admits no other name

    return ClusterEngine(cfg)
