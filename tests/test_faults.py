"""Faults lose nothing: killed and terminated training, diverged workers, unwritable and full
disks. (Crashed worker processes: tests/test_engines.py; killed workflows: test_workflow.py.)"""

from __future__ import annotations

import json
import random
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dmaml import config
from dmaml.errors import CheckpointError
from dmaml.learner import Learner

from .test_learner import rows, theta_of

FLAGS = {"dataset": "sine", "workers": 2, "steps": 600, "eval_every": 10,
         "checkpoint_every": 10, "val_tasks": 3, "test_tasks": 10,
         "checkpoint_steps": "[100,600]"}
ENGINES = ["sequential", "vectorized", "processes"]


def train(out, engine, **extra):
    args = [sys.executable, "-m", "dmaml.cli", "train", "--out", str(out), "--engine", engine]
    for k, v in {**FLAGS, **extra}.items():
        args += [f"--{k}", str(v)]
    return args


def same_run(a, b):
    assert rows(a / "metrics.csv") == rows(b / "metrics.csv")
    assert rows(a / "test.csv") == rows(b / "test.csv")
    for name in ("latest.npz", "step000600.npz"):
        x, y = theta_of(a, name), theta_of(b, name)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Uninterrupted reference runs, one per engine."""
    root = tmp_path_factory.mktemp("whole")
    for engine in ENGINES:
        subprocess.run(train(root / engine, engine), check=True, capture_output=True)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_killed_and_terminated_training_resumes_bitwise(tmp_path, whole, engine):
    """Five kills at random moments (SIGKILL, SIGTERM, and SIGINT as Ctrl-C sends it), some
    while a checkpoint is written every 10 steps, then a last uninterrupted start: the same
    numbers as a run never stopped."""
    out = tmp_path / "run"
    rng = random.Random(0)
    for sig in ([signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGTERM,
                 signal.SIGKILL]):
        proc = subprocess.Popen(train(out, engine), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        # wait for training to be under way (past TensorFlow's start-up), then a random moment
        deadline = time.time() + 120
        start_rows = len(rows(out / "metrics.csv")) if (out / "metrics.csv").exists() else 0
        while time.time() < deadline and proc.poll() is None:
            if (out / "metrics.csv").exists() and len(rows(out / "metrics.csv")) > start_rows:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.15))
        sent = time.time()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGINT:  # its default is a KeyboardInterrupt traceback, exit 1
            assert proc.returncode == 130, err[-3000:]
        if sig != signal.SIGKILL and proc.returncode == 128 + sig:
            assert time.time() - sent < 30, f"{sig.name} must checkpoint and exit within seconds"
            assert "checkpoint written" in err and "run the same command again" in err
            assert "Traceback" not in err, err[-3000:]
            assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert len(rows(out / "metrics.csv")) < 60, "the kills must land before the end"
    subprocess.run(train(out, engine), check=True, capture_output=True)
    same_run(out, whole / engine)


def test_diverged_worker_dropped_from_merge(tmp_path, caplog):
    """on_divergence: drop leaves a non-finite worker out (logged, counted in metrics.csv)."""
    cfg = config.load(None, {"dataset": "sine", "workers": 2, "steps": 20, "eval_every": 10,
                             "val_tasks": 3, "test_tasks": 0, "checkpoint_steps": [],
                             "on_divergence": "drop"})
    learner = Learner(cfg, tmp_path)
    from dmaml.engines.sequential import SequentialEngine

    class PoisonedEngine(SequentialEngine):
        """The real engine, with worker 1's parameters made non-finite at step 10."""

        def run(self, theta, states, step):
            results = super().run(theta, states, step)
            if step == 10:
                results[1].params["dense0/w"][0, 0] = np.nan
            return results

    learner.engine = PoisonedEngine(cfg)
    final = learner.train()
    assert all(np.isfinite(v).all() for v in final.theta.values())
    assert "worker(s) [1] produced a non-finite loss or parameters; left out" in caplog.text
    assert [r["dropped"] for r in rows(tmp_path / "metrics.csv")] == ["0", "1"]


def test_unwritable_run_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = config.load(None, {"dataset": "sine", "steps": 2, "eval_every": 1})
    with pytest.raises(CheckpointError, match="cannot write the run folder.*choose a writable --out"):
        Learner(cfg, blocker / "run").train()


@pytest.mark.slow  # three trainings in fresh processes
def test_full_disk_on_checkpoint_write(tmp_path):
    """A file-size limit makes the checkpoint write fail as a full disk would: a clear error, the
    previous checkpoint intact, no temporary file left, and a later run resumes from it."""
    out = tmp_path / "run"
    flags = ["--steps", "20", "--checkpoint_every", "10", "--eval_every", "10"]
    base = [sys.executable, "-m", "dmaml.cli", "train", "--dataset", "sine", "--workers", "40",
            "--val_tasks", "2", "--test_tasks", "0", "--checkpoint_steps", "[]", "--out", str(out)]
    subprocess.run([*base, "--steps", "10", "--checkpoint_every", "10", "--eval_every", "10"],
                   check=True, capture_output=True)
    size = (out / "checkpoints" / "latest.npz").stat().st_size
    before = (out / "checkpoints" / "latest.npz").read_bytes()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    done = subprocess.run([*base, *flags], capture_output=True, text=True, preexec_fn=limit)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "latest.npz: cannot write checkpoint" in done.stderr and "free disk space" in done.stderr
    assert (out / "checkpoints" / "latest.npz").read_bytes() == before
    assert not list((out / "checkpoints").glob(".*tmp*"))
    subprocess.run([*base, *flags], check=True, capture_output=True)
    assert rows(out / "metrics.csv")[-1]["step"] == "20"


def test_diverged_run_is_kept_and_marked_in_the_table(tmp_path, caplog):
    """The workflow trains with --diverged-ok: the job succeeds, run.json says diverged, the
    metrics up to the divergence stay, and the table marks the run."""
    from dmaml.cli import main
    from dmaml.report import tables

    common = ["train", "--dataset", "sine", "--steps", "40", "--eval_every", "10",
              "--val_tasks", "3", "--test_tasks", "10", "--checkpoint_steps", "[10,40]"]
    assert main([*common, "--out", str(tmp_path / "ok")]) == 0
    bad = [*common, "--beta", "1e38", "--out", str(tmp_path / "bad")]
    assert main(bad) == 2 and "the run diverged" in caplog.text
    assert main([*bad, "--diverged-ok"]) == 0
    assert '"status": "diverged"' in (tmp_path / "bad" / "run.json").read_text()
    table, runs = tables.checkpoint_table([tmp_path / "bad"])
    assert "†" in tables.markdown(table, "step", "T", runs)
