"""The DMAML central learner (the paper's algorithm) and its run folder.

One **run**: every worker starts from a copy of the central parameters theta, applies ``m``
consecutive MAML steps with its own tasks and its own Adam state (kept from run to run), and
returns its parameters; theta becomes their merge (:mod:`dmaml.merge`). With one worker this is
plain MAML. The central model's step count grows by ``m`` per run.

Run folder (``out``): ``config.yaml`` (resolved settings), ``run.json`` (code version, status),
``metrics.csv`` (a row per validation), ``test.csv`` (a row per table checkpoint),
``checkpoints/latest.npz`` (everything needed to resume) and ``checkpoints/stepNNNNNN.npz``
(theta at each table checkpoint). A run started again on a folder holding ``latest.npz`` resumes
from it and ends with exactly the numbers of an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import signal
import time
from pathlib import Path

import numpy as np
import yaml

from dmaml import checkpoint, merge, models, optimizer, provenance
from dmaml.config import RunConfig, dump, workers_at
from dmaml.engines import Engine, WorkerResult, create
from dmaml.errors import CheckpointError, TrainingDiverged, TrainingInterrupted
from dmaml.evaluate import Evaluator
from dmaml.tasks import INIT, make_sampler, task_rng

log = logging.getLogger(__name__)

# Settings that may differ between a checkpoint and the run resuming it: they change how or how
# long the run is carried out, not the numbers it produces up to the checkpoint.
RESUMABLE_CHANGES = {"steps", "engine", "threads", "checkpoint_steps", "checkpoint_every",
                     "test_tasks", "on_divergence"}


class CsvLog:
    """A CSV file written row by row (flushed), cut back to a step when a run resumes."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns

    def start(self, resume_step: int | None) -> None:
        rows = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)


class Learner:
    """Trains one DMAML run into the folder ``out`` (see the module docstring)."""

    def __init__(self, cfg: RunConfig, out: str | Path, engine: Engine | None = None):
        self.cfg, self.out = cfg, Path(out)
        self.model = models.for_config(cfg)
        self.engine = engine
        classification = self.model.classification
        self.metric_name = "accuracy" if classification else "mse"
        extra = ["train_acc", "val_loss", "val_acc"] if classification else ["val_loss"]
        self.metrics = CsvLog(self.out / "metrics.csv",
                              ["step", "runs", "workers", "wall_s", "train_loss", *extra, "dropped"])
        self.tests = CsvLog(self.out / "test.csv", ["step", "metric", "mean", "ci95", "tasks"])
        self.stop_signal: int | None = None

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
        checkpoint.save(self.out / "checkpoints" / "latest.npz", arrays)

    def _load_latest(self, path: Path) -> dict:
        a = checkpoint.load(path)
        saved = yaml.safe_load(str(a["config"]))
        now = self.cfg.to_dict()
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
        if changed:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
            raise CheckpointError(f"{path}: checkpoint of a different config ({diff}); refusing to "
                                  "resume: use another --out folder or delete its checkpoints/")
        states = {w: optimizer.AdamState(checkpoint.unpack(f"opt{w}/m", a),
                                         checkpoint.unpack(f"opt{w}/v", a), a[f"opt{w}/t"][()])
                  for w in range(self.cfg.workers)}
        return {"theta": checkpoint.unpack("theta", a), "states": states, "step": int(a["step"]),
                "elapsed": float(a["elapsed"]), "acc": a["acc"], "dropped": int(a["dropped"])}

    def _write_run_json(self, status: str, s: dict, **extra) -> None:
        info = {"status": status, "step": s["step"], "steps": self.cfg.steps,
                "wall_s": round(s["elapsed"], 3), **self.versions, **extra}
        if s["step"]:
            info["seconds_per_step"] = s["elapsed"] / s["step"]
        tmp = self.out / ".run.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(self.out / "run.json")

    # --- training ----------------------------------------------------------------------------

    def train(self) -> dict:
        """Train to ``cfg.steps`` (resuming from ``out`` when it holds a checkpoint).

        Returns the final state (``theta``, optimiser ``states``, ``step``). Raises
        :class:`TrainingDiverged` or :class:`TrainingInterrupted` after saving what is kept.
        """
        cfg = self.cfg
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / ".write-test").touch()
            (self.out / ".write-test").unlink()
        except OSError as e:
            raise CheckpointError(f"{self.out}: cannot write the run folder ({e.strerror or e}); "
                                  "choose a writable --out") from None
        latest = self.out / "checkpoints" / "latest.npz"
        s = self._load_latest(latest) if latest.exists() else self._fresh_state()
        resume = s["step"] if latest.exists() else None
        if resume is not None:
            log.info("resuming %s from step %d", self.out, resume)
        dump(cfg, self.out / "config.yaml")
        self.versions = provenance.versions()
        self.metrics.start(resume)
        self.tests.start(resume)
        self.engine = self.engine or create(cfg)
        validator = Evaluator(self.model, make_sampler(cfg, "val"), "val", cfg.val_tasks,
                              cfg.eval_seed, cfg.alpha, cfg.eval_inner_steps)
        tester = (Evaluator(self.model, make_sampler(cfg, "test"), "test", cfg.test_tasks,
                            cfg.eval_seed, cfg.alpha, cfg.eval_inner_steps)
                  if cfg.test_tasks and cfg.checkpoint_steps else None)
        self._write_run_json("running", s, engine=cfg.engine)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM,)}
        try:
            while s["step"] < cfg.steps:
                if self.stop_signal is not None:
                    self._save_latest(s)
                    self._write_run_json("interrupted", s)
                    raise TrainingInterrupted(
                        f"signal {self.stop_signal} at step {s['step']}: checkpoint written to "
                        f"{latest}; run the same command again to resume")
                self._run(s, validator, tester)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.engine.close()
        self._write_run_json("finished", s)
        return s

    def _on_signal(self, signum, frame) -> None:
        log.warning("signal %d: finishing this run, then writing a checkpoint", signum)
        self.stop_signal = signum

    def _run(self, s: dict, validator: Evaluator, tester: Evaluator | None) -> None:
        cfg = self.cfg
        start = time.perf_counter()
        n = workers_at(cfg, s["step"])
        results = self.engine.run(s["theta"], {w: s["states"][w] for w in range(n)}, s["step"])
        s["step"] += cfg.steps_per_run
        kept = self._finite(results, s)
        w = merge.weights(cfg.merge, [r.loss for r in kept.values()], cfg.merge_temperature,
                          cfg.merge_drop)
        s["theta"] = merge.merge([r.params for r in kept.values()], w)
        for i, r in kept.items():
            s["states"][i] = r.opt_state
        s["acc"] += [np.mean([r.loss for r in kept.values()]),
                     np.mean([r.metric for r in kept.values()]), 1]
        s["elapsed"] += time.perf_counter() - start
        step = s["step"]
        if step % cfg.eval_every == 0 or step == cfg.steps:
            self._validate(s, n, validator)
        if step in cfg.checkpoint_steps:
            checkpoint.save(self.out / "checkpoints" / f"step{step:06d}.npz",
                            checkpoint.pack("theta", s["theta"]))
            if tester is not None:
                score = tester(s["theta"])
                self.tests.append({"step": step, "metric": self.metric_name, "mean": score.mean,
                                   "ci95": score.ci95, "tasks": score.tasks})
                log.info("step %d: test %s %.4f +- %.4f over %d tasks", step, self.metric_name,
                         score.mean, score.ci95, score.tasks)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            self._save_latest(s)

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
        score = validator(s["theta"])
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
        per_step = s["elapsed"] / s["step"]
        log.info("step %d/%d | n=%d | %s | %.1f s (%.3f s/step, %.0f s left)", s["step"],
                 cfg.steps, n, shown, s["elapsed"], per_step, per_step * (cfg.steps - s["step"]))


def config_of(run: Path) -> RunConfig:
    """The resolved config saved in a run folder."""
    from dmaml.config import load

    return load(run / "config.yaml")



