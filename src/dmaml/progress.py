"""How a run shows where it stands: the clock, the time left, progress lines and TensorBoard.

Progress reaches the log (stderr) at once, at every validation and at least every
:data:`PROGRESS_EVERY` seconds, with an estimate of the time left that leaves out compilation
(the first run, and the first evaluation of each kind, compile) and counts the validation and
testing to come; the learner writes the same numbers to ``run.json`` for ``dmaml status``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dmaml.clock import duration
from dmaml.config import RunConfig
from dmaml.evaluate import Evaluator, Score

log = logging.getLogger(__name__)

PROGRESS_EVERY = 30.0  # seconds between progress lines at most
EARLY_STEPS = 50  # timed steps before the time left is more than an early estimate


class Progress:
    """The clock and the progress reports of one training session of the run ``cfg`` in
    ``out``; TensorBoard scalars into ``tensorboard`` (None: none)."""

    def __init__(self, cfg: RunConfig, out: Path, tensorboard: Path | None = None):
        self.cfg, self.out = cfg, out
        self._compiled = False  # whether the first run (which compiles) is done
        self._runs_s, self._steps = 0.0, 0  # seconds and MAML steps of the runs after it
        self._task_s: float | None = None  # seconds a task of an evaluation that did not compile
        self._evaluated: set[str] = set()  # the kinds of evaluation done (compiled) so far
        self._shown = 0.0  # when progress was last shown (time.monotonic)
        self._summary = None
        if tensorboard is not None:
            import tensorflow as tf

            self._summary = tf.summary.create_file_writer(str(tensorboard))

    # --- the clock -----------------------------------------------------------------------------

    def ran(self, seconds: float, steps: int) -> None:
        """Count a run of ``steps`` MAML steps that took ``seconds`` toward the speed, unless it
        is the first (it compiles)."""
        if not self._compiled:
            log.info("%s: first run done in %.1f s (compilation included)", self.out, seconds)
            self._compiled, self._shown = True, time.monotonic()
        else:
            self._runs_s += seconds
            self._steps += steps

    def evaluated(self, kind: str, seconds: float, tasks: int) -> None:
        """Count an evaluation of ``kind`` over ``tasks`` tasks that took ``seconds`` toward the
        seconds per task, unless it is the first of its kind (it compiles)."""
        if kind in self._evaluated:
            self._task_s = seconds / tasks
        self._evaluated.add(kind)

    def evaluate(self, evaluator: Evaluator, theta: dict, step: int, kind: str) -> Score:
        """``evaluator(theta)``, timed (:meth:`evaluated`); announced first when it may take a
        while."""
        first = kind not in self._evaluated
        if first or kind == "test":
            log.info("%s: step %d: %s on %d tasks%s", self.out, step, kind, evaluator.count,
                     " (the first compiles the evaluation)" if first else "")
        started = time.perf_counter()
        score = evaluator(theta)
        self.evaluated(kind, time.perf_counter() - started, score.tasks)
        return score

    def step_s(self) -> float | None:
        """Seconds a MAML step of training, from the runs after the first (None before)."""
        return self._runs_s / self._steps if self._steps else None

    def time_left(self, step: int) -> float | None:
        """Seconds left from ``step``, compilation left out: training at the measured speed, plus
        the validation and test tasks to come at the measured seconds per evaluated task."""
        cfg, speed = self.cfg, self.step_s()
        if speed is None:
            return None
        left = speed * (cfg.steps - step)
        if self._task_s is not None:
            later = range(step + 1, cfg.steps + 1)
            validations = sum(1 for k in later if k % cfg.eval_every == 0 or k == cfg.steps)
            tests = sum(1 for k in cfg.checkpoint_steps if step < k <= cfg.steps)
            left += self._task_s * (validations * cfg.val_tasks + tests * cfg.test_tasks)
        return left

    # --- reports -------------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether a progress line is due (:data:`PROGRESS_EVERY` seconds since the last)."""
        return time.monotonic() - self._shown >= PROGRESS_EVERY

    def show(self, step: int, text: str) -> float | None:
        """Log ``text`` with the speed and the time left from ``step``; returns the time left."""
        eta = self.time_left(step)
        timing = (f"{self.step_s():.3f} s/step, {duration(eta)} left" if eta is not None else
                  "measuring speed")
        early = [what for what, yes in (
            (f"from {self._steps} timed steps", self._steps < EARLY_STEPS),
            ("evaluation not timed yet", self._task_s is None)) if yes]
        if eta is not None and early:
            timing += f" (early estimate: {', '.join(early)})"
        log.info("%s: %s | %s", self.out, text, timing)
        self._shown = time.monotonic()
        return eta

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Write ``values`` at ``step`` to TensorBoard (nothing without it)."""
        if self._summary is None:
            return
        import tensorflow as tf

        with self._summary.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)
        self._summary.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self._summary is not None:
            self._summary.close()
