"""The run folder: what one run writes, and how a run started again finds where it stood.

A run folder (``dmaml train --out``) holds ``config.yaml`` (resolved settings), ``run.json``
(code version, status, progress), ``metrics.csv`` (a row per validation), ``test.csv`` (a row
per table checkpoint), ``worker_scores.csv`` (weighted and drop_worst merges: each worker's probe
score and weight at every run, :mod:`dmaml.merge`), ``checkpoints/latest.npz`` (everything
needed to resume, :mod:`dmaml.state`; ``previous.npz``, the one before it, in case it is
damaged), ``checkpoints/stepNNNNNN.npz`` (theta at each table checkpoint), ``tensorboard/`` (the
same curves for ``tensorboard --logdir``) and ``run.lock`` (the one writer's host, pid and start
time: :mod:`dmaml.run_lock`). A run started again on a folder holding a checkpoint resumes from
it and ends with exactly the numbers of an uninterrupted run; a finished run whose test settings
changed is re-tested from its kept checkpoints (:mod:`dmaml.retest`), so that ``test.csv``
always agrees with ``config.yaml``.

``run.json``'s ``status`` is ``running`` (with ``eta_s``, the seconds left, and ``updated``,
rewritten at least every 30 s), then ``finished``, ``interrupted`` (a signal: rerun to resume),
``diverged`` (with ``diverged_at``) or ``failed`` (with ``error``); ``dmaml status`` and the
workflow read it. Every file is written atomically (:mod:`dmaml.atomic`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import yaml

from dmaml import atomic, checkpoint
from dmaml.config import RunConfig, inert
from dmaml.errors import CheckpointError, ConfigError, DamagedCheckpoint
from dmaml.state import TrainingState

log = logging.getLogger(__name__)

# A run.json that says "running" but was not updated for this many seconds (progress is written
# at least every 30 s) belongs to a process that was probably killed: `dmaml status` shows it as
# stalled, and its lock may be taken over (dmaml.run_lock).
STALE_AFTER = 600.0

# Settings that may differ between a checkpoint and the run resuming it: they change how or how
# long the run is carried out, not the numbers it produces up to the checkpoint.
RESUMABLE_CHANGES = {"steps", "engine", "threads", "checkpoint_steps", "checkpoint_every",
                     "test_tasks", "on_divergence", "tensorboard"}


class CsvLog:
    """A CSV file written row by row (flushed), cut back to a step when a run resumes."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns

    def rows(self) -> list[dict]:
        """The rows written so far (none before the file exists)."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def write(self, rows: list[dict]) -> None:
        """Replace the file's rows (atomically)."""
        with atomic.replacing(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def start(self, resume_step: int | None) -> None:
        """Keep the rows up to ``resume_step`` (none for a fresh run)."""
        self.write([] if resume_step is None else
                   [r for r in self.rows() if int(r["step"]) <= resume_step])

    def append(self, *rows: dict) -> None:
        """Add rows at the end (in one write)."""
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerows(rows)


class RunFolder:
    """The run folder ``out`` of a run of ``cfg`` (see the module docstring)."""

    def __init__(self, out: str | Path, cfg: RunConfig, classification: bool):
        self.out, self.cfg = Path(out), cfg
        extra = ["train_acc", "val_loss", "val_acc"] if classification else ["val_loss"]
        self.metrics = CsvLog(self.out / "metrics.csv",
                              ["step", "runs", "workers", "wall_s", "train_loss", *extra, "dropped"])
        self.tests = CsvLog(self.out / "test.csv", ["step", "metric", "mean", "ci95", "tasks"])
        self.scores = (None if cfg.merge == "mean" else
                       CsvLog(self.out / "worker_scores.csv", ["step", "worker", "score", "weight"]))
        self.checkpoints = self.out / "checkpoints"
        self.latest = self.checkpoints / "latest.npz"
        self.previous = self.checkpoints / "previous.npz"

    def tables(self) -> list[CsvLog]:
        """The CSV files the run writes as it goes."""
        return [t for t in (self.metrics, self.tests, self.scores) if t is not None]

    def prepare(self) -> None:
        """Make the folder; an error that says what to do if it cannot be written."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / ".write-test").touch()
            (self.out / ".write-test").unlink()
        except OSError as e:
            raise CheckpointError(f"{self.out}: cannot write the run folder ({e.strerror or e}); "
                                  "choose a writable --out") from None

    # --- the resume checkpoint -------------------------------------------------------------

    def save_latest(self, state: TrainingState) -> None:
        """Keep ``state`` as ``latest.npz`` (the one it replaces as ``previous.npz``)."""
        arrays = {**state.to_arrays(), "config": np.asarray(yaml.safe_dump(self.cfg.to_dict()))}
        checkpoint.save(self.latest, arrays, previous=self.previous)

    def resume(self) -> TrainingState | None:
        """The state saved in ``checkpoints/`` (None if there is none): ``latest.npz``, or the
        one before it when that is missing or damaged; an error that names both files and says
        what deleting does when neither can be resumed."""
        latest, previous = self.latest, self.previous
        restart = "to train the run again from step 0"
        try:
            if latest.exists():
                return self._load(latest)
            problem = f"{latest}: missing"
        except DamagedCheckpoint as e:
            problem = f"{latest}: {e.what}"
            if not previous.exists():
                raise CheckpointError(f"{problem}, and no {previous.name} to fall back on; delete "
                                      f"it {restart}") from None
        if not previous.exists():
            return None
        try:
            state = self._load(previous)
        except DamagedCheckpoint as e:
            if latest.exists():
                raise CheckpointError(f"{latest} and {previous}: both damaged checkpoints (not "
                                      f"readable .npz files); delete both {restart}") from None
            raise CheckpointError(f"{problem}, and {previous}: {e.what}; delete it "
                                  f"{restart}") from None
        log.warning("%s; resuming from the checkpoint before it, %s (step %d)", problem,
                    previous, state.step)
        return state

    def _load(self, path: Path) -> TrainingState:
        """The state in ``path``; an error if it was saved by a run of other settings."""
        a = checkpoint.load(path)
        try:
            saved = yaml.safe_load(str(a["config"]))
        except KeyError:  # a kept stepNNNNNN.npz copied over it, say
            raise DamagedCheckpoint(path, "not a dmaml training checkpoint (no config)",
                                    "delete it to start over") from None
        now = self.cfg.to_dict()
        same = RESUMABLE_CHANGES | inert(self.cfg)
        changed = sorted(k for k in now if k not in same and saved.get(k) != now[k])
        if changed:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
            raise CheckpointError(f"{path}: checkpoint of a different config ({diff}); refusing to "
                                  "resume: use another --out folder or delete its checkpoints/")
        return TrainingState.from_arrays(a, self.cfg.workers)

    # --- kept checkpoints (the tables' steps) ----------------------------------------------

    def kept(self, step: int) -> Path:
        """Where theta of table checkpoint ``step`` is kept."""
        return kept_path(self.out, step)

    def keep(self, step: int, theta: dict[str, np.ndarray]) -> None:
        """Keep theta of table checkpoint ``step``."""
        checkpoint.save(self.kept(step), checkpoint.pack("theta", theta))

    def kept_theta(self, step: int) -> dict[str, np.ndarray]:
        """Theta kept at ``step``."""
        return checkpoint.unpack("theta", checkpoint.load(
            self.kept(step), fix=f"delete {self.out} to train the run again, or leave step {step} "
                                 "out of checkpoint_steps"))

    # --- run.json ----------------------------------------------------------------------------

    def last_status(self) -> dict:
        """``run.json`` as last written ({} when there is none or it cannot be read)."""
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((self.out / "run.json").read_text())
            if isinstance(info, dict):
                return info
        return {}

    def write_status(self, status: str, state: TrainingState, facts: dict, *,
                     probe: bool = False, **extra) -> None:
        """Write ``run.json``: ``status`` at ``state``, with ``facts`` (versions, machine,
        engine), ``extra`` fields and the state's timings (kept in its checkpoint, so that a
        session that trains nothing leaves them as they were): the last measured seconds per
        training step ``step_s`` and, for a merge that scores workers (``probe``), the seconds
        spent scoring them, ``probe_s``."""
        info = {"status": status, "step": state.step, "steps": self.cfg.steps,
                "wall_s": round(state.elapsed, 3), "updated": round(time.time()), **facts,
                **extra}
        if state.step:
            info["seconds_per_step"] = state.elapsed / state.step  # compilation included
        step_s = state.step_s
        if step_s is None:  # a checkpoint of an earlier version: the last measure written
            step_s = self.last_status().get("step_s")
        if step_s is not None:
            info["step_s"] = step_s  # as progress shows it
        if probe:
            info["probe_s"] = round(state.probe_s, 3)  # scoring workers, every session
        atomic.write_text(self.out / "run.json", json.dumps(info, indent=2) + "\n")


def kept_path(run: Path, step: int) -> Path:
    """The file of table checkpoint ``step`` in the run folder ``run``."""
    return run / "checkpoints" / f"step{step:06d}.npz"


def config_file(run: Path) -> Path:
    """The ``config.yaml`` of the run folder ``run``; an error if ``run`` is not one."""
    path = run / "config.yaml"
    if not run.is_dir():
        raise ConfigError(f"{run}: no such run folder; give --run a folder written by "
                          "`dmaml train --out`")
    if not path.is_file():
        raise ConfigError(f"{path}: not found; {run} is not a run folder written by "
                          "`dmaml train --out`")
    return path


def checkpoint_file(run: Path, step: int | None) -> Path:
    """The checkpoint of ``step`` (None: the latest state) in ``run``; a missing one lists those
    kept."""
    folder = run / "checkpoints"
    path = kept_path(run, step) if step is not None else folder / "latest.npz"
    if not path.is_file():
        kept = sorted(int(m[1]) for p in folder.glob("step*.npz")
                      if (m := re.fullmatch(r"step(\d+)", p.stem)))
        what = f"no checkpoint of step {step}" if step is not None else "no checkpoint yet"
        raise CheckpointError(f"{path}: {what}; steps kept: {kept} (the run's checkpoint_steps "
                              "that it reached); choose one with --step")
    return path


def config_of(run: Path) -> RunConfig:
    """The resolved config saved in a run folder."""
    from dmaml.config import load

    return load(run / "config.yaml")
