"""Re-testing a resumed run from its kept checkpoints, so that ``test.csv`` follows
``config.yaml`` when the test settings (``test_tasks``, ``checkpoint_steps``) changed."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from dmaml.errors import CheckpointError
from dmaml.run_folder import RunFolder

log = logging.getLogger(__name__)

# test(step, theta) -> the test.csv row of theta at step
Test = Callable[[int, dict[str, np.ndarray]], dict]


class Retest:
    """Brings the ``test.csv`` of ``folder`` in line with its settings."""

    def __init__(self, folder: RunFolder):
        self.folder = folder

    def __call__(self, resume: int, test: Test | None) -> None:
        """For a run resumed at ``resume``: rows of steps no longer tested, or over another
        number of tasks, go; steps to test (by ``test``; None: the run tests nothing) that the
        run has passed are tested from their kept ``stepNNNNNN.npz``. Nothing is written when a
        step to test was never kept."""
        folder, cfg = self.folder, self.folder.cfg
        kept = {int(r["step"]): r for r in folder.tests.rows() if int(r["tasks"]) == cfg.test_tasks}
        due = sorted(k for k in cfg.checkpoint_steps if k <= resume) if test else []
        paths = {k: folder.kept(k) for k in due if k not in kept}
        never = [k for k, path in paths.items() if not path.exists()]
        if never:
            raise CheckpointError(
                f"{folder.out}: step(s) {never} are to be tested but their parameters were never "
                f"kept (the run is at step {resume}); delete {folder.out} to train it again with "
                "these checkpoint_steps, or leave those steps out")
        for step in paths:
            log.info("%s: re-testing step %d on %d tasks (test settings changed)", folder.out,
                     step, cfg.test_tasks)
            kept[step] = test(step, folder.kept_theta(step))
        folder.tests.write([kept[k] for k in due])
