"""The DMAML central learner (the paper's algorithm) and its run folder.

One **run**: every worker starts from a copy of the central parameters theta, applies ``m``
consecutive MAML steps with its own tasks and its own Adam state (kept from run to run), and
returns its parameters; theta becomes their merge (:mod:`dmaml.merge`). With one worker this is
plain MAML. The central model's step count grows by ``m`` per run.

Run folder (``out``): ``config.yaml`` (resolved settings), ``run.json`` (code version, status),
``metrics.csv`` (a row per validation), ``test.csv`` (a row per table checkpoint),
``worker_scores.csv`` (weighted and drop_worst merges: each worker's probe score and weight at
every run, :mod:`dmaml.merge`), ``checkpoints/latest.npz`` (everything needed to resume;
``previous.npz``, the one before it, in case it is damaged), ``checkpoints/stepNNNNNN.npz``
(theta at each table checkpoint), ``tensorboard/`` (the same curves for ``tensorboard
--logdir``) and ``run.lock`` (the one writer's host, pid and start time:
:mod:`dmaml.run_lock`). A run started again on a folder holding a checkpoint resumes from it
and ends with exactly the numbers of an uninterrupted run; a finished run whose test settings
changed is re-tested from its kept checkpoints, so that ``test.csv`` always agrees with
``config.yaml``.

Progress reaches the log (stderr) at once, at every validation and at least every
:data:`PROGRESS_EVERY` seconds, with an estimate of the time left that leaves out compilation
and counts validation and testing; ``run.json`` carries the same numbers for ``dmaml status``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import signal
import time
from pathlib import Path

import numpy as np
import yaml

from dmaml import atomic, checkpoint, merge, models, optimizer, provenance, run_lock
from dmaml.config import ENGINE_CHOICES, RunConfig, dump, inert, workers_at
from dmaml.engines import Engine, WorkerResult, choose, create
from dmaml.errors import CheckpointError, TrainingDiverged, TrainingInterrupted
from dmaml.evaluate import Evaluator
from dmaml.status import duration
from dmaml.tasks import INIT, PROBE, make_sampler, task_rng

log = logging.getLogger(__name__)

# Settings that may differ between a checkpoint and the run resuming it: they change how or how
# long the run is carried out, not the numbers it produces up to the checkpoint.
RESUMABLE_CHANGES = {"steps", "engine", "threads", "checkpoint_steps", "checkpoint_every",
                     "test_tasks", "on_divergence", "tensorboard"}
PROGRESS_EVERY = 30.0  # seconds between progress lines at most
EARLY_STEPS = 50  # timed steps before the time left is more than an early estimate


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


class Learner:
    """Trains one DMAML run into the folder ``out`` (see the module docstring)."""

    def __init__(self, cfg: RunConfig, out: str | Path, engine: Engine | None = None):
        self.cfg, self.out = cfg, Path(out)
        self.model = models.for_config(cfg)
        self.engine = engine
        self.engine_choice = "set"  # why this engine (run.json), see _engine_name
        classification = self.model.classification
        self.metric_name = "accuracy" if classification else "mse"
        extra = ["train_acc", "val_loss", "val_acc"] if classification else ["val_loss"]
        self.metrics = CsvLog(self.out / "metrics.csv",
                              ["step", "runs", "workers", "wall_s", "train_loss", *extra, "dropped"])
        self.tests = CsvLog(self.out / "test.csv", ["step", "metric", "mean", "ci95", "tasks"])
        self.scores = (None if cfg.merge == "mean" else
                       CsvLog(self.out / "worker_scores.csv", ["step", "worker", "score", "weight"]))
        self.prober: Evaluator | None = None  # the merge's probe, opened by train()
        self.stop_signal: int | None = None
        self.summary = None  # TensorBoard writer, opened by train()
        # whether the first run (which compiles) is done, seconds and steps of the runs after
        # it, seconds per task of an evaluation after the first of its kind (which compiles),
        # the kinds evaluated so far, and when progress was last shown
        self.clock = {"compiled": False, "runs_s": 0.0, "steps": 0, "task_s": None,
                      "evaluated": set(), "shown": 0.0, "probe_s": 0.0}

    # --- state -------------------------------------------------------------------------------

    def _fresh_state(self) -> dict:
        theta = self.model.init(task_rng(self.cfg.seed, INIT))
        return {"theta": theta, "states": {w: optimizer.init(theta) for w in range(self.cfg.workers)},
                "step": 0, "elapsed": 0.0, "acc": np.zeros(3), "dropped": 0}

    def _save_latest(self, s: dict) -> None:
        arrays = checkpoint.pack("theta", s["theta"])
        for w, st in s["states"].items():
            arrays.update(checkpoint.pack(f"opt{w}/m", st.m))
            arrays.update(checkpoint.pack(f"opt{w}/v", st.v))
            arrays[f"opt{w}/t"] = np.asarray(st.t)
        arrays.update(step=np.asarray(s["step"]), elapsed=np.asarray(s["elapsed"]),
                      acc=s["acc"], dropped=np.asarray(s["dropped"]),
                      config=np.asarray(yaml.safe_dump(self.cfg.to_dict())))
        folder = self.out / "checkpoints"
        checkpoint.save(folder / "latest.npz", arrays, previous=folder / "previous.npz")

    def _load_latest(self, path: Path) -> dict:
        a = checkpoint.load(path)
        try:
            saved = yaml.safe_load(str(a["config"]))
        except KeyError:
            raise CheckpointError(f"{path}: not a dmaml training checkpoint (no config); delete "
                                  "it to start over") from None
        now = self.cfg.to_dict()
        same = RESUMABLE_CHANGES | inert(self.cfg)
        changed = sorted(k for k in now if k not in same and saved.get(k) != now[k])
        if changed:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
            raise CheckpointError(f"{path}: checkpoint of a different config ({diff}); refusing to "
                                  "resume: use another --out folder or delete its checkpoints/")
        states = {w: optimizer.AdamState(checkpoint.unpack(f"opt{w}/m", a),
                                         checkpoint.unpack(f"opt{w}/v", a), a[f"opt{w}/t"][()])
                  for w in range(self.cfg.workers)}
        return {"theta": checkpoint.unpack("theta", a), "states": states, "step": int(a["step"]),
                "elapsed": float(a["elapsed"]), "acc": a["acc"], "dropped": int(a["dropped"])}

    def _resume_state(self) -> dict | None:
        """The state saved in ``checkpoints/`` (None if there is none): ``latest.npz``, or the
        one before it when that is missing or damaged."""
        folder = self.out / "checkpoints"
        latest, previous = folder / "latest.npz", folder / "previous.npz"
        try:
            if latest.exists():
                return self._load_latest(latest)
            problem = CheckpointError(f"{latest}: missing")
        except CheckpointError as e:
            problem = e
        if not previous.exists():
            if latest.exists():
                raise problem
            return None
        s = self._load_latest(previous)
        log.warning("%s; resuming from the checkpoint before it, %s (step %d)", problem,
                    previous, s["step"])
        return s

    def _write_run_json(self, status: str, s: dict, **extra) -> None:
        info = {"status": status, "step": s["step"], "steps": self.cfg.steps,
                "wall_s": round(s["elapsed"], 3), "updated": round(time.time()), **self.versions,
                **extra}
        if s["step"]:
            info["seconds_per_step"] = s["elapsed"] / s["step"]  # compilation included
        step_s = self._step_s()
        if step_s is None:  # nothing timed in this process yet (a re-test): keep the last measure
            with contextlib.suppress(OSError, ValueError, AttributeError):
                step_s = json.loads((self.out / "run.json").read_text()).get("step_s")
        if step_s is not None:
            info["step_s"] = step_s  # as progress shows it
        if self.scores is not None:
            info["probe_s"] = round(self.clock["probe_s"], 3)  # scoring workers, this session
        atomic.write_text(self.out / "run.json", json.dumps(info, indent=2) + "\n")

    # --- training ----------------------------------------------------------------------------

    def train(self) -> dict:
        """Train to ``cfg.steps`` (resuming from ``out`` when it holds a checkpoint).

        Returns the final state (``theta``, optimiser ``states``, ``step``). Raises
        :class:`TrainingDiverged` or :class:`TrainingInterrupted` after saving what is kept.
        Settings and data are checked before anything is written to ``out``.
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
        # the merge's probe (dmaml.merge): training tasks of a stream of their own, adapted as
        # at validation; none for the mean merge, whose numbers stay the paper algorithm's
        self.prober = (None if self.scores is None else
                       Evaluator(self.model, make_sampler(cfg, "train"), "train",
                                 cfg.merge_probe_tasks, cfg.seed, cfg.alpha,
                                 cfg.eval_inner_steps, stream=PROBE))
        with run_lock.hold(self.out):  # one writer per folder, from its first change to the end
            return self._train(validator, tester)

    def _train(self, validator: Evaluator, tester: Evaluator | None) -> dict:
        """:meth:`train` once its data is checked and the run folder is locked."""
        cfg = self.cfg
        if self.engine is None:
            name, self.engine_choice = self._engine_name()
            self.engine = create(cfg, name)
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        s = None
        try:
            s = self._open_folder(tester)
            while s["step"] < cfg.steps:
                if self.stop_signal is not None:
                    self._save_latest(s)
                    self._write_run_json("interrupted", s)
                    raise TrainingInterrupted(
                        f"{signal.Signals(self.stop_signal).name} at step {s['step']}: checkpoint "
                        f"written to {self.out / 'checkpoints' / 'latest.npz'}; run the same "
                        "command again to resume", self.stop_signal)
                self._run(s, validator, tester)
        except Exception as e:  # other than the stops that write their own status
            if s is not None and not isinstance(e, (TrainingInterrupted, TrainingDiverged)):
                self._write_run_json("failed", s, error=f"{type(e).__name__}: {e}")
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.engine.close()
            if self.summary is not None:
                self.summary.close()
        self._write_run_json("finished", s)
        log.info("%s: finished %d steps in %s", self.out, s["step"], duration(s["elapsed"]))
        return s

    def _engine_name(self) -> tuple[str, str]:
        """The engine to compute with and why (:func:`dmaml.engines.choose`); a resumed ``auto``
        run keeps the engine it started with, so that it ends bitwise as it would have."""
        name, why = choose(self.cfg)
        if self.cfg.engine == "auto":
            with contextlib.suppress(OSError, ValueError, KeyError, AttributeError):
                before = json.loads((self.out / "run.json").read_text())
                if before["engine_choice"].startswith("auto") and before["engine"] in ENGINE_CHOICES:
                    name = before["engine"]
                    why = f"auto, kept from the run's start: {name}"
        log.info("%s: engine %s (%s)", self.out, name, why)
        return name, why

    def _open_folder(self, tester: Evaluator | None) -> dict:
        """Create or resume the run folder; returns the state to train from."""
        cfg = self.cfg
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / ".write-test").touch()
            (self.out / ".write-test").unlink()
        except OSError as e:
            raise CheckpointError(f"{self.out}: cannot write the run folder ({e.strerror or e}); "
                                  "choose a writable --out") from None
        s = self._resume_state()
        resume = None if s is None else s["step"]
        s = s or self._fresh_state()
        if resume is not None and resume > cfg.steps:
            raise CheckpointError(f"{self.out}: the run is at step {resume}, beyond steps="
                                  f"{cfg.steps}; set steps >= {resume} or use another --out")
        if cfg.tensorboard:
            import tensorflow as tf

            self.summary = tf.summary.create_file_writer(str(self.out / "tensorboard"))
        for table in (self.metrics, self.tests, self.scores):
            if table is not None:
                table.start(resume)
        if resume:
            self._retest(resume, tester)
        dump(cfg, self.out / "config.yaml")  # after test.csv agrees with it
        self.versions = {**provenance.versions(), **provenance.machine(),
                         "engine": self.engine.name, "engine_choice": self.engine_choice}
        self._write_run_json("running", s)
        log.info("%s: %s from step %d of %d%s", self.out,
                 "starting" if resume is None else "resuming", s["step"], cfg.steps,
                 "; the first run compiles the MAML step" if s["step"] < cfg.steps else
                 ": nothing left to train")
        return s

    def _retest(self, resume: int, tester: Evaluator | None) -> None:
        """Bring a resumed run's test.csv in line with its config: rows of steps no longer
        tested, or over another number of tasks, go; steps to test that the run has passed are
        tested from their kept ``stepNNNNNN.npz``."""
        cfg = self.cfg
        kept = {int(r["step"]): r for r in self.tests.rows() if int(r["tasks"]) == cfg.test_tasks}
        due = sorted(k for k in cfg.checkpoint_steps if k <= resume) if tester else []
        paths = {k: self.out / "checkpoints" / f"step{k:06d}.npz" for k in due if k not in kept}
        never = [k for k, path in paths.items() if not path.exists()]
        if never:
            raise CheckpointError(
                f"{self.out}: step(s) {never} are to be tested but their parameters were never "
                f"kept (the run is at step {resume}); delete {self.out} to train it again with "
                "these checkpoint_steps, or leave those steps out")
        for step, path in paths.items():
            log.info("%s: re-testing step %d on %d tasks (test settings changed)", self.out,
                     step, cfg.test_tasks)
            kept[step] = self._test(step, checkpoint.unpack("theta", checkpoint.load(path)),
                                    tester)
        self.tests.write([kept[k] for k in due])

    def _evaluate(self, evaluator: Evaluator, theta: dict, step: int, kind: str):
        """``evaluator(theta)``, timed for the estimate of the time left unless it is the first
        of its kind (it compiles); announced first when it may take a while."""
        first = kind not in self.clock["evaluated"]
        if first or kind == "test":
            log.info("%s: step %d: %s on %d tasks%s", self.out, step, kind, evaluator.count,
                     " (the first compiles the evaluation)" if first else "")
        started = time.perf_counter()
        score = evaluator(theta)
        if not first:
            self.clock["task_s"] = (time.perf_counter() - started) / score.tasks
        self.clock["evaluated"].add(kind)
        return score

    def _test(self, step: int, theta: dict, tester: Evaluator) -> dict:
        score = self._evaluate(tester, theta, step, "test")
        log.info("%s: step %d: test %s %.4f +- %.4f over %d tasks", self.out, step,
                 self.metric_name, score.mean, score.ci95, score.tasks)
        self._scalars(step, {f"test/{self.metric_name}": score.mean})
        return {"step": step, "metric": self.metric_name, "mean": score.mean,
                "ci95": score.ci95, "tasks": score.tasks}

    def _on_signal(self, signum, frame) -> None:
        log.warning("%s: finishing this run, then writing a checkpoint",
                    signal.Signals(signum).name)
        self.stop_signal = signum
        run_lock.mark_stopping(self.out)  # a retried job waits for this checkpoint

    def _run(self, s: dict, validator: Evaluator, tester: Evaluator | None) -> None:
        cfg = self.cfg
        start = time.perf_counter()
        n = workers_at(cfg, s["step"])
        results = self.engine.run(s["theta"], {w: s["states"][w] for w in range(n)}, s["step"])
        s["step"] += cfg.steps_per_run
        kept = self._finite(results, s)
        if self.prober is not None:  # by worker (engines return them in their own order)
            kept = dict(sorted(kept.items()))
        scores = self._probe(kept, s["step"] - cfg.steps_per_run)
        w = merge.weights(cfg.merge, scores, cfg.merge_temperature, cfg.merge_drop)
        if self.scores is not None:
            self.scores.append(*({"step": s["step"], "worker": i, "score": score, "weight": wi}
                                 for i, score, wi in zip(kept, scores, w)))
        s["theta"] = merge.merge([r.params for r in kept.values()], w)
        for i, r in kept.items():
            s["states"][i] = r.opt_state
        s["acc"] += [np.mean([r.loss for r in kept.values()]),
                     np.mean([r.metric for r in kept.values()]), 1]
        seconds = time.perf_counter() - start
        s["elapsed"] += seconds
        self._clock_run(s, seconds)
        step = s["step"]
        if step % cfg.eval_every == 0 or step == cfg.steps:
            self._validate(s, n, validator)
        elif time.monotonic() - self.clock["shown"] >= PROGRESS_EVERY:
            self._progress(s, f"step {step}/{cfg.steps} | n={n}")
        if step in cfg.checkpoint_steps:
            checkpoint.save(self.out / "checkpoints" / f"step{step:06d}.npz",
                            checkpoint.pack("theta", s["theta"]))
            if tester is not None:
                self.tests.append(self._test(step, s["theta"], tester))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            self._save_latest(s)

    def _probe(self, kept: dict[int, WorkerResult], start: int) -> list[float]:
        """Each kept worker's probe score (:mod:`dmaml.merge`): the mean query loss of its
        returned parameters adapted to the run's probe tasks; zeros for the mean merge."""
        if self.prober is None:
            return [0.0] * len(kept)
        began = time.perf_counter()
        scores = [self.prober(r.params, start).loss for r in kept.values()]
        self.clock["probe_s"] += time.perf_counter() - began
        return scores

    # --- progress ----------------------------------------------------------------------------

    def _clock_run(self, s: dict, seconds: float) -> None:
        """Count a run's time toward the speed estimate, except the first (it compiles)."""
        if not self.clock["compiled"]:
            log.info("%s: first run done in %.1f s (compilation included)", self.out, seconds)
            self.clock.update(compiled=True, shown=time.monotonic())
        else:
            self.clock["runs_s"] += seconds
            self.clock["steps"] += self.cfg.steps_per_run

    def _step_s(self) -> float | None:
        """Seconds a MAML step of training, from the runs after the first (None before)."""
        c = self.clock
        return c["runs_s"] / c["steps"] if c["steps"] else None

    def _eta(self, step: int) -> float | None:
        """Seconds left, compilation left out: training at the measured speed, plus the
        validation and test tasks to come at the measured seconds per evaluated task."""
        cfg, c, speed = self.cfg, self.clock, self._step_s()
        if speed is None:
            return None
        left = speed * (cfg.steps - step)
        if c["task_s"] is not None:
            later = range(step + 1, cfg.steps + 1)
            validations = sum(1 for k in later if k % cfg.eval_every == 0 or k == cfg.steps)
            tests = sum(1 for k in cfg.checkpoint_steps if step < k <= cfg.steps)
            left += c["task_s"] * (validations * cfg.val_tasks + tests * cfg.test_tasks)
        return left

    def _progress(self, s: dict, text: str) -> None:
        """A progress line with speed and time left; the same numbers into run.json."""
        eta = self._eta(s["step"])
        timing = (f"{self._step_s():.3f} s/step, {duration(eta)} left" if eta is not None else
                  "measuring speed")
        early = [what for what, yes in (
            (f"from {self.clock['steps']} timed steps", self.clock["steps"] < EARLY_STEPS),
            ("evaluation not timed yet", self.clock["task_s"] is None)) if yes]
        if eta is not None and early:
            timing += f" (early estimate: {', '.join(early)})"
        log.info("%s: %s | %s", self.out, text, timing)
        self.clock["shown"] = time.monotonic()
        self._write_run_json("running", s, eta_s=eta)

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        if self.summary is None:
            return
        import tensorflow as tf

        with self.summary.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)
        self.summary.flush()

    def _finite(self, results: dict[int, WorkerResult], s: dict) -> dict[int, WorkerResult]:
        """Workers whose loss and parameters are finite; handles the others per on_divergence."""
        bad = [w for w, r in results.items()
               if not (math.isfinite(r.loss) and all(np.isfinite(p).all() for p in r.params.values()))]
        if not bad:
            return results
        where = f"step {s['step']}: worker(s) {bad} produced a non-finite loss or parameters"
        if self.cfg.on_divergence == "stop" or len(bad) == len(results):
            # the last row of metrics.csv shows where: the non-finite training loss, no validation
            self.metrics.append({"step": s["step"], "runs": s["step"] // self.cfg.steps_per_run,
                                 "workers": len(results), "wall_s": round(s["elapsed"], 3),
                                 "train_loss": float(np.mean([r.loss for r in results.values()])),
                                 "dropped": len(bad)})
            self._write_run_json("diverged", s, diverged_at=s["step"])
            raise TrainingDiverged(f"{where}; the run diverged (metrics up to here are in "
                                   f"{self.out / 'metrics.csv'}): lower alpha or beta, or set "
                                   "on_divergence: drop to leave such workers out of the merge")
        log.warning("%s; left out of the merge", where)
        s["dropped"] += len(bad)
        return {w: r for w, r in results.items() if w not in bad}

    def _validate(self, s: dict, n: int, validator: Evaluator) -> None:
        cfg = self.cfg
        loss, metric, runs = s["acc"]
        score = self._evaluate(validator, s["theta"], s["step"], "validation")
        row = {"step": s["step"], "runs": s["step"] // cfg.steps_per_run, "workers": n,
               "wall_s": round(s["elapsed"], 3), "train_loss": loss / runs,
               "val_loss": score.loss, "dropped": s["dropped"]}
        if self.model.classification:
            row.update(train_acc=metric / runs, val_acc=score.mean)
            shown = f"train acc {metric / runs:.3f} | val acc {score.mean:.3f}"
        else:
            shown = f"train mse {loss / runs:.4f} | val mse {score.mean:.4f}"
        self.metrics.append(row)
        s["acc"] = np.zeros(3)
        name = self.metric_name
        self._scalars(s["step"], {"train/loss": loss / runs, f"train/{name}": metric / runs,
                                  "val/loss": score.loss, f"val/{name}": score.mean,
                                  "seconds_per_step": s["elapsed"] / s["step"]})
        self._progress(s, f"step {s['step']}/{cfg.steps} | n={n} | {shown}")


def config_of(run: Path) -> RunConfig:
    """The resolved config saved in a run folder."""
    from dmaml.config import load

    return load(run / "config.yaml")



