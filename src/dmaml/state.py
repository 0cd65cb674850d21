"""A run's training state: what the learner carries from run to run and a checkpoint keeps.

On disk (``checkpoints/latest.npz``, :mod:`dmaml.run_folder`) it is a flat set of named arrays:
``theta/<name>``, ``opt<w>/m/<name>``, ``opt<w>/v/<name>`` and ``opt<w>/t`` for each worker's
Adam state, ``step``, ``elapsed`` and ``dropped``, ``acc``: the sums since the last validation
of the training loss and metric and the count of runs they cover, in that order, and the
timings ``run.json`` shows, ``step_s`` (NaN: not measured) and ``probe_s``, so that a session
that trains nothing (a re-test) keeps them. These names are the checkpoint format: files written
by earlier versions (without the timings) resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dmaml import checkpoint

if TYPE_CHECKING:
    from dmaml.optimizer import AdamState


@dataclass
class TrainingState:
    """The central parameters, each worker's Adam state and the counters of a run."""

    theta: dict[str, np.ndarray]
    states: dict[int, AdamState]  # by worker; kept from run to run
    step: int = 0  # MAML steps of the central model
    elapsed: float = 0.0  # seconds of training so far, over every session
    loss_sum: float = 0.0  # since the last validation: the runs' mean training losses, summed
    metric_sum: float = 0.0  # likewise their mean training metric
    runs: int = 0  # the runs these sums cover
    dropped: int = 0  # non-finite workers left out of a merge so far
    step_s: float | None = None  # seconds a training step, as last measured (None: not yet)
    probe_s: float = 0.0  # seconds spent scoring workers for the merge so far, every session

    @classmethod
    def fresh(cls, theta: dict[str, np.ndarray], workers: int) -> TrainingState:
        """The state before the first run: ``theta`` and a new Adam state for each worker."""
        from dmaml import optimizer  # TensorFlow: not for readers of run folders

        return cls(theta, {w: optimizer.init(theta) for w in range(workers)})

    def add_run(self, loss: float, metric: float) -> None:
        """Count one run's mean training loss and metric toward the next validation."""
        sums = np.array([self.loss_sum, self.metric_sum, self.runs], dtype=np.float64)
        sums += [loss, metric, 1]  # in float64, as checkpoints of every version hold them
        self.loss_sum, self.metric_sum, self.runs = float(sums[0]), float(sums[1]), int(sums[2])

    def take_means(self) -> tuple[float, float]:
        """The mean training loss and metric since the last validation; the sums start again."""
        means = self.loss_sum / self.runs, self.metric_sum / self.runs
        self.loss_sum, self.metric_sum, self.runs = 0.0, 0.0, 0
        return means

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The state as a checkpoint's named arrays (see the module docstring)."""
        arrays = checkpoint.pack("theta", self.theta)
        for w, st in self.states.items():
            arrays.update(checkpoint.pack(f"opt{w}/m", st.m))
            arrays.update(checkpoint.pack(f"opt{w}/v", st.v))
            arrays[f"opt{w}/t"] = np.asarray(st.t)
        arrays.update(step=np.asarray(self.step), elapsed=np.asarray(self.elapsed),
                      acc=np.array([self.loss_sum, self.metric_sum, self.runs], dtype=np.float64),
                      dropped=np.asarray(self.dropped),
                      step_s=np.asarray(np.nan if self.step_s is None else self.step_s),
                      probe_s=np.asarray(self.probe_s))
        return arrays

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], workers: int) -> TrainingState:
        """The state that :meth:`to_arrays` wrote, for ``workers`` workers."""
        from dmaml import optimizer

        states = {w: optimizer.AdamState(checkpoint.unpack(f"opt{w}/m", a),
                                         checkpoint.unpack(f"opt{w}/v", a), a[f"opt{w}/t"][()])
                  for w in range(workers)}
        loss_sum, metric_sum, runs = (float(x) for x in a["acc"])
        step_s = float(a.get("step_s", np.nan))
        return cls(checkpoint.unpack("theta", a), states, int(a["step"]), float(a["elapsed"]),
                   loss_sum, metric_sum, int(runs), int(a["dropped"]),
                   None if np.isnan(step_s) else step_s, float(a.get("probe_s", 0.0)))
