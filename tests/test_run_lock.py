"""One writer per run folder (dmaml.run_lock): a second `dmaml train` on a folder being written
stops at once with one line naming the holder, the folder ends as a single run leaves it, a lock
left by a killed process is taken over, and `dmaml status` names who holds a stalled run."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time

import pytest

from dmaml import run_lock
from dmaml.cli import main
from dmaml.learner import Learner
from dmaml.run_lock import RunLocked

from .test_faults import same_run
from .test_learner import sine

FLAGS = {"dataset": "sine", "workers": 2, "steps": 600, "eval_every": 10, "val_tasks": 3,
         "test_tasks": 10, "checkpoint_steps": "[100,600]", "engine": "vectorized", "tensorboard": "false"}


def train(out) -> list[str]:
    args = [sys.executable, "-m", "dmaml.cli", "train", "--out", str(out)]
    for k, v in FLAGS.items():
        args += [f"--{k}", str(v)]
    return args


def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_second_writer_refuses_and_the_folder_equals_a_single_run(tmp_path):
    """Two trainings started on one folder: the second stops at once with one line naming the
    first (host, pid, since) and what to do; the first ends as a run alone would."""
    whole = tmp_path / "whole"
    subprocess.run(train(whole), check=True, capture_output=True)
    out = tmp_path / "run"
    first = subprocess.Popen(train(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 300
    while run_lock.holder(out) is None and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert run_lock.holder(out)["pid"] == first.pid
    second = subprocess.run(train(out), capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert f"another dmaml train writes this run folder: pid {first.pid} on host " \
           f"{platform.node()} since " in errors[0]
    assert "wait for it to finish" in errors[0] and "run this command again" in errors[0]
    assert "starting TensorFlow" not in second.stderr  # it stopped before loading anything
    assert first.poll() is None, "the first must still be training, or the test proves nothing"
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    same_run(out, whole)
    for name in ("test.csv", "config.yaml"):  # metrics.csv and run.json hold seconds
        assert (out / name).read_bytes() == (whole / name).read_bytes()
    assert files(out) == files(whole) and (out / run_lock.LOCK_NAME).read_text() == ""
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_the_lock_is_exclusive_within_and_across_processes(tmp_path):
    with run_lock.hold(tmp_path):
        assert run_lock.holder(tmp_path)["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=f"pid {os.getpid()} on host "), \
                run_lock.hold(tmp_path):
            pass
        with pytest.raises(RunLocked):
            run_lock.check(tmp_path)
        # what the learner does first: nothing in the folder changes
        before = files(tmp_path)
        with pytest.raises(RunLocked):
            Learner(sine(steps=4), tmp_path).train()
        assert files(tmp_path) == before and not (tmp_path / "run.json").exists()
    assert run_lock.holder(tmp_path) is None  # released: the file names no holder
    run_lock.check(tmp_path)


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    pid = dead_pid()
    (tmp_path / run_lock.LOCK_NAME).write_text(
        json.dumps({"host": platform.node(), "pid": pid, "since": 1_700_000_000}))
    with caplog.at_level(logging.WARNING):
        Learner(sine(steps=4, eval_every=2), tmp_path).train()
    assert f"taking over the lock of pid {pid} on host {platform.node()} since " \
           "2023-11-14 22:13:20 UTC (no longer running)" in caplog.text
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "finished"


def test_a_live_holder_on_another_host_is_refused(tmp_path):
    """Where locks do not reach across hosts (Lustre without flock, NFS with nolock), a holder
    on another host whose run still writes progress keeps the folder."""
    (tmp_path / run_lock.LOCK_NAME).write_text(
        json.dumps({"host": "node-elsewhere", "pid": 4242, "since": time.time()}))
    (tmp_path / "run.json").write_text(json.dumps({"status": "running", "updated": time.time()}))
    with pytest.raises(RunLocked, match="pid 4242 on host node-elsewhere .* may not share locks"):
        Learner(sine(steps=4), tmp_path).train()


def test_status_names_the_holder_of_a_stalled_run(tmp_path, capsys):
    run = tmp_path / "runs/exp/seed0"
    run.mkdir(parents=True)
    pid = dead_pid()
    (run / "run.json").write_text(json.dumps({"status": "running", "step": 10, "steps": 20,
                                              "updated": time.time() - 3600}))
    (run / run_lock.LOCK_NAME).write_text(
        json.dumps({"host": platform.node(), "pid": pid, "since": time.time() - 4000}))
    assert main(["status", str(tmp_path / "runs")]) == 0
    line = capsys.readouterr().out.splitlines()[1].split()
    assert line[1] == "stalled?" and line[-2:] == [f"{platform.node()}:{pid}", "(gone)"]


HOLD_THEN_STOP = """
import sys, time
from dmaml import run_lock
with run_lock.hold(sys.argv[1]):
    if sys.argv[2] == "stopping":
        run_lock.mark_stopping(sys.argv[1])
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def holding(folder, state: str, seconds: float) -> subprocess.Popen:
    """A process that holds ``folder``'s lock for ``seconds`` (marked stopping or not)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_THEN_STOP, str(folder), state,
                             str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_writer_waits_for_a_holder_that_is_stopping(tmp_path, caplog):
    """A retried SLURM job may start while the cancelled one writes its checkpoint: a holder
    marked stopping is waited for (check and hold); one at work is refused at once."""
    first = holding(tmp_path, "stopping", 2)
    assert run_lock.holder(tmp_path)["stopping"] >= run_lock.holder(tmp_path)["since"]
    start = time.monotonic()
    with caplog.at_level(logging.INFO):
        run_lock.check(tmp_path)
    assert time.monotonic() - start > 1.5  # it returned only once the holder had let go
    first.wait(timeout=60)
    assert f"waiting for pid {first.pid} on host {platform.node()}" in caplog.text
    assert "which is stopping" in caplog.text
    first = holding(tmp_path, "stopping", 2)
    start = time.monotonic()
    with run_lock.hold(tmp_path):
        assert time.monotonic() - start > 1.5 and run_lock.holder(tmp_path)["pid"] == os.getpid()
    first.wait(timeout=60)
    at_work = holding(tmp_path, "working", 60)
    try:
        start = time.monotonic()
        with pytest.raises(RunLocked, match=f"pid {at_work.pid} on host "):
            run_lock.check(tmp_path)
        assert time.monotonic() - start < 5
    finally:
        at_work.kill()
        at_work.wait()
    run_lock.mark_stopping(tmp_path)  # a process that holds no lock on it changes nothing
    assert "stopping" not in run_lock.holder(tmp_path)  # the killed holder's line stays


@pytest.mark.slow
def test_a_cancelled_job_and_its_retry_end_as_a_single_run(tmp_path):
    """What SLURM does on `scancel`: SIGTERM to every process of the job, the training's worker
    processes included; the retry starts at once. The workers ignore it and the training
    finishes its run, checkpoints and exits; the retry waits for it, resumes, and the folder
    ends as a run alone would."""
    flags = [f"--{k}={v}" for k, v in FLAGS.items() if k != "engine"] + ["--engine=processes"]
    args = [sys.executable, "-m", "dmaml.cli", "train", *flags]
    whole = tmp_path / "whole"
    subprocess.run([*args, "--out", str(whole)], check=True, capture_output=True, timeout=900)
    out = tmp_path / "run"
    first = subprocess.Popen([*args, "--out", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 600
    while not (out / "checkpoints/latest.npz").exists() and time.time() < deadline \
            and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, "the first ended before its first checkpoint"
    os.killpg(first.pid, signal.SIGTERM)  # the whole job: the training and its workers
    retry = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True,
                           timeout=900)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "restarting it" not in err, err[-3000:]  # its workers lived to finish the run
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert re.search(r"resuming from step [1-9]", retry.stderr), retry.stderr[-3000:]
    same_run(out, whole)
    assert (out / "test.csv").read_bytes() == (whole / "test.csv").read_bytes()
