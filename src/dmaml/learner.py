"""The DMAML central learner: the paper's algorithm as a training loop.

One **run**: every worker starts from a copy of the central parameters theta, applies ``m``
consecutive MAML steps with its own tasks and its own Adam state (kept from run to run), and
returns its parameters; theta becomes their merge (:mod:`dmaml.merge`). With one worker this is
plain MAML. The central model's step count grows by ``m`` per run.

What a run writes and how it resumes is :mod:`dmaml.run_folder`; the state it carries,
:mod:`dmaml.state`; progress and time left, :mod:`dmaml.progress`; re-testing of kept
checkpoints, :mod:`dmaml.retest`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmaml import merge, models, optimizer, provenance, run_lock
from dmaml.clock import duration
from dmaml.config import ENGINE_CHOICES, RunConfig, dump, workers_at
from dmaml.engines import Engine, WorkerResult, choose, create
from dmaml.errors import CheckpointError, TrainingDiverged, TrainingInterrupted
from dmaml.evaluate import Evaluator
from dmaml.progress import Progress
from dmaml.retest import Retest
from dmaml.run_folder import RunFolder
from dmaml.state import TrainingState
from dmaml.tasks import INIT, PROBE, make_sampler, task_rng

log = logging.getLogger(__name__)


@dataclass
class Stop:
    """The signal that asked the run to stop (None: none yet)."""

    signum: int | None = None


@contextlib.contextmanager
def stop_signals(out: Path) -> Iterator[Stop]:
    """Within the block, SIGTERM and SIGINT only ask the run in the folder ``out`` to stop (it
    finishes the run in progress and writes a checkpoint) and mark its lock as stopping; the
    handlers before are restored after it."""
    stop = Stop()

    def on_signal(signum, frame) -> None:
        log.warning("%s: finishing this run, then writing a checkpoint",
                    signal.Signals(signum).name)
        stop.signum = signum
        run_lock.mark_stopping(out)  # a retried job waits for this checkpoint

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def diverged(results: dict[int, WorkerResult]) -> list[int]:
    """The workers whose loss or parameters are not finite."""
    return [w for w, r in results.items()
            if not (math.isfinite(r.loss) and all(np.isfinite(p).all() for p in r.params.values()))]


def engine_for(cfg: RunConfig, folder: RunFolder) -> tuple[Engine, str]:
    """The engine to compute with and why (:func:`dmaml.engines.choose`); a resumed ``auto`` run
    keeps the engine it started with, so that it ends bitwise as it would have."""
    name, why = choose(cfg)
    if cfg.engine == "auto":
        with contextlib.suppress(KeyError, AttributeError):
            before = folder.last_status()
            if before["engine_choice"].startswith("auto") and before["engine"] in ENGINE_CHOICES:
                name = before["engine"]
                why = f"auto, kept from the run's start: {name}"
    log.info("%s: engine %s (%s)", folder.out, name, why)
    return create(cfg, name), why


@dataclass(frozen=True)
class Session:
    """What one call of :meth:`Learner.train` computes and reports with, once the folder is
    locked."""

    engine: Engine
    facts: dict  # run.json's code versions, machine and engine
    progress: Progress
    validator: Evaluator
    tester: Evaluator | None
    prober: Evaluator | None  # the merge's probe (dmaml.merge); None for the mean merge


class Learner:
    """Trains one DMAML run of ``cfg`` into the run folder ``out``, with ``engine`` (default:
    :func:`dmaml.engines.choose`'s)."""

    def __init__(self, cfg: RunConfig, out: str | Path, engine: Engine | None = None):
        self.cfg, self.out = cfg, Path(out)
        self.model = models.for_config(cfg)
        self.engine = engine
        self.metric_name = "accuracy" if self.model.classification else "mse"
        self.folder = RunFolder(self.out, cfg, self.model.classification)

    def train(self) -> TrainingState:
        """Train to ``cfg.steps`` (resuming from ``out`` when it holds a checkpoint); returns the
        final state. Raises :class:`TrainingDiverged` or :class:`TrainingInterrupted` after
        saving what is kept. Settings and data are checked before anything is written to ``out``.
        """
        cfg = self.cfg
        log.info("%s: loading data", self.out)
        beyond = [k for k in cfg.checkpoint_steps if k > cfg.steps]
        if beyond:
            log.warning("%s: checkpoint_steps %s lie beyond steps=%d: their parameters are not "
                        "kept%s; set --checkpoint_steps to steps this run reaches", self.out,
                        beyond, cfg.steps, " nor tested" if cfg.test_tasks else "")
        validator = Evaluator(self.model, make_sampler(cfg, "val"), "val", cfg.val_tasks,
                              cfg.eval_seed, cfg.alpha, cfg.eval_inner_steps)
        tester = (Evaluator(self.model, make_sampler(cfg, "test"), "test", cfg.test_tasks,
                            cfg.eval_seed, cfg.alpha, cfg.eval_inner_steps)
                  if cfg.test_tasks and cfg.checkpoint_steps else None)
        # training tasks of a stream of their own, adapted as at validation; none for the mean
        # merge, whose numbers stay the paper algorithm's
        prober = (None if self.folder.scores is None else
                  Evaluator(self.model, make_sampler(cfg, "train"), "train", cfg.merge_probe_tasks,
                            cfg.seed, cfg.alpha, cfg.eval_inner_steps, stream=PROBE))
        with run_lock.hold(self.out):  # one writer per folder, from its first change to the end
            return self._train(validator, tester, prober)

    def _train(self, validator: Evaluator, tester: Evaluator | None,
               prober: Evaluator | None) -> TrainingState:
        """:meth:`train` once its data is checked and the run folder is locked."""
        cfg, folder = self.cfg, self.folder
        engine, choice = ((self.engine, "set") if self.engine is not None else
                          engine_for(cfg, self.folder))
        session = progress = None
        try:
            with stop_signals(self.out) as stop:
                folder.prepare()
                s = folder.resume()
                resume = None if s is None else s.step
                s = s or TrainingState.fresh(self.model.init(task_rng(cfg.seed, INIT)), cfg.workers)
                if resume is not None and resume > cfg.steps:
                    raise CheckpointError(f"{self.out}: the run is at step {resume}, beyond steps="
                                          f"{cfg.steps}; set steps >= {resume} or use another --out")
                progress = Progress(cfg, self.out, self.out / "tensorboard" if cfg.tensorboard
                                    else None)
                facts = {**provenance.versions(), **provenance.machine(), "engine": engine.name,
                         "engine_choice": choice}
                opening = Session(engine, facts, progress, validator, tester, prober)
                self._open(s, resume, opening)
                session = opening  # from here on a failure is recorded in run.json
                while s.step < cfg.steps:
                    if stop.signum is not None:
                        folder.save_latest(s)
                        self._status(session, "interrupted", s)
                        raise TrainingInterrupted(
                            f"{signal.Signals(stop.signum).name} at step {s.step}: checkpoint "
                            f"written to {folder.latest}; run the same command again to resume",
                            stop.signum)
                    self._run(s, session)
        except Exception as e:  # other than the stops that write their own status
            if session is not None and not isinstance(e, (TrainingInterrupted, TrainingDiverged)):
                self._status(session, "failed", s, error=f"{type(e).__name__}: {e}")
            raise
        finally:
            engine.close()
            if progress is not None:
                progress.close()
        self._status(session, "finished", s)
        log.info("%s: finished %d steps in %s", self.out, s.step, duration(s.elapsed))
        return s

    def _open(self, s: TrainingState, resume: int | None, session: Session) -> None:
        """Start the run folder's tables from ``resume`` (None: a fresh run), re-test what the
        test settings ask for, then write config.yaml and run.json."""
        cfg = self.cfg
        for table in self.folder.tables():
            table.start(resume)
        if resume:
            Retest(self.folder)(resume, None if session.tester is None else
                                lambda step, theta: self._test(step, theta, session))
        dump(cfg, self.out / "config.yaml")  # after test.csv agrees with it
        self._status(session, "running", s)
        log.info("%s: %s from step %d of %d%s", self.out,
                 "starting" if resume is None else "resuming", s.step, cfg.steps,
                 "; the first run compiles the MAML step" if s.step < cfg.steps else
                 ": nothing left to train")

    def _status(self, session: Session, status: str, s: TrainingState, **extra) -> None:
        """Write run.json (:meth:`dmaml.run_folder.RunFolder.write_status`)."""
        self.folder.write_status(status, s, session.facts, probe=session.prober is not None,
                                 **extra)

    def _test(self, step: int, theta: dict, session: Session) -> dict:
        """The test.csv row of ``theta`` at ``step``."""
        score = session.progress.evaluate(session.tester, theta, step, "test")
        log.info("%s: step %d: test %s %.4f +- %.4f over %d tasks", self.out, step,
                 self.metric_name, score.mean, score.ci95, score.tasks)
        session.progress.scalars(step, {f"test/{self.metric_name}": score.mean})
        return {"step": step, "metric": self.metric_name, "mean": score.mean,
                "ci95": score.ci95, "tasks": score.tasks}

    def _run(self, s: TrainingState, session: Session) -> None:
        """One run of every worker, the merge, and what is due after it."""
        cfg, folder, progress = self.cfg, self.folder, session.progress
        start = time.perf_counter()
        n = workers_at(cfg, s.step)
        # adam_state: reset gives each worker a new Adam each run, as a new optimiser would be
        states = {w: optimizer.init(s.theta) if cfg.adam_state == "reset" else s.states[w]
                  for w in range(n)}
        results = session.engine.run(s.theta, states, s.step)
        s.step += cfg.steps_per_run
        kept = self._leave_out(diverged(results), results, s, session)
        if session.prober is not None:  # by worker (engines return them in their own order)
            kept = dict(sorted(kept.items()))
        scores = self._probe(kept, s, session)
        w = merge.weights(cfg.merge, scores, cfg.merge_temperature, cfg.merge_drop)
        if folder.scores is not None:
            folder.scores.append(*({"step": s.step, "worker": i, "score": score, "weight": wi}
                                   for i, score, wi in zip(kept, scores, w)))
        s.theta = merge.merge([r.params for r in kept.values()], w)
        for i, r in kept.items():
            s.states[i] = r.opt_state
        s.add_run(np.mean([r.loss for r in kept.values()]), np.mean([r.metric for r in kept.values()]))
        seconds = time.perf_counter() - start
        s.elapsed += seconds
        progress.ran(seconds, cfg.steps_per_run)
        if progress.step_s() is not None:  # this session's measure; else the last one kept
            s.step_s = progress.step_s()
        step = s.step
        if step % cfg.eval_every == 0 or step == cfg.steps:
            self._validate(s, n, session)
        elif progress.due():
            self._show(s, f"step {step}/{cfg.steps} | n={n}", session)
        if step in cfg.checkpoint_steps:
            folder.keep(step, s.theta)
            if session.tester is not None:
                folder.tests.append(self._test(step, s.theta, session))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            folder.save_latest(s)

    def _leave_out(self, bad: list[int], results: dict[int, WorkerResult], s: TrainingState,
                   session: Session) -> dict[int, WorkerResult]:
        """The results without the diverged workers ``bad``, per on_divergence: a stop (all
        diverged, or on_divergence: stop) is recorded and raised."""
        if not bad:
            return results
        where = f"step {s.step}: worker(s) {bad} produced a non-finite loss or parameters"
        if self.cfg.on_divergence == "stop" or len(bad) == len(results):
            # the last row of metrics.csv shows where: the non-finite training loss, no validation
            self.folder.metrics.append({
                "step": s.step, "runs": s.step // self.cfg.steps_per_run, "workers": len(results),
                "wall_s": round(s.elapsed, 3), "dropped": len(bad),
                "train_loss": float(np.mean([r.loss for r in results.values()]))})
            self._status(session, "diverged", s, diverged_at=s.step)
            raise TrainingDiverged(f"{where}; the run diverged (metrics up to here are in "
                                   f"{self.folder.metrics.path}): lower alpha or beta, or set "
                                   "on_divergence: drop to leave such workers out of the merge")
        log.warning("%s; left out of the merge", where)
        s.dropped += len(bad)
        return {w: r for w, r in results.items() if w not in bad}

    def _probe(self, kept: dict[int, WorkerResult], s: TrainingState,
               session: Session) -> list[float]:
        """Each kept worker's probe score (:mod:`dmaml.merge`): the mean query loss of its
        returned parameters adapted to the probe tasks of the run just done (it started at step
        ``s.step - steps_per_run``); zeros for the mean merge. Its time adds to ``s.probe_s``."""
        if session.prober is None:
            return [0.0] * len(kept)
        began, start = time.perf_counter(), s.step - self.cfg.steps_per_run
        scores = [session.prober(r.params, start).loss for r in kept.values()]
        s.probe_s += time.perf_counter() - began
        return scores

    def _validate(self, s: TrainingState, n: int, session: Session) -> None:
        """A metrics.csv row: the training means since the last validation and a validation."""
        cfg, name = self.cfg, self.metric_name
        loss, metric = s.take_means()
        score = session.progress.evaluate(session.validator, s.theta, s.step, "validation")
        row = {"step": s.step, "runs": s.step // cfg.steps_per_run, "workers": n,
               "wall_s": round(s.elapsed, 3), "train_loss": loss,
               "val_loss": score.loss, "dropped": s.dropped}
        if self.model.classification:
            row.update(train_acc=metric, val_acc=score.mean)
            shown = f"train acc {metric:.3f} | val acc {score.mean:.3f}"
        else:
            shown = f"train mse {loss:.4f} | val mse {score.mean:.4f}"
        self.folder.metrics.append(row)
        session.progress.scalars(s.step, {"train/loss": loss, f"train/{name}": metric,
                                          "val/loss": score.loss, f"val/{name}": score.mean,
                                          "seconds_per_step": s.elapsed / s.step})
        self._show(s, f"step {s.step}/{cfg.steps} | n={n} | {shown}", session)

    def _show(self, s: TrainingState, text: str, session: Session) -> None:
        """A progress line; the same numbers into run.json."""
        self._status(session, "running", s, eta_s=session.progress.show(s.step, text))
