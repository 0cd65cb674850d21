"""After a killed Snakemake: the recovery of docs/running.md (--unlock, --rerun-incomplete, the
orphan training left to finish) ends with the table of an uninterrupted run; a second job on the
orphan's folder fails with the holder's line; a failing table job keeps the previous table; the
training jobs depend on one digest of the training code, and only a change to that code re-runs
them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmaml import run_lock

from .test_workflow import copy_workflow, planned, snakemake

pytest.importorskip("snakemake")

# Table 2 on sine: two runs of 600 steps (about a minute each on two loaded cores)
CONFIG = ["--config", "train={steps: 600, eval_every: 20, val_tasks: 5, test_tasks: 50, seeds: [0], "
          "checkpoint_steps: [200, 600]}",
          "experiments={table2: {dataset: sine, ways: 1, shots: 10, workers: [1, 2], "
          "tasks_per_step: 10}}"]
TABLE = [f"results/tables/table2.{ext}" for ext in ("csv", "md", "html")]
TIMEOUT = 1800  # several times the few minutes the runs take, for a loaded machine


def wait_for(condition, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def flows(tmp_path_factory):
    """An uninterrupted Table 2 and one whose Snakemake was killed mid-training, then
    recovered as docs/running.md says; what each step returned."""
    root = tmp_path_factory.mktemp("recovery")
    whole = copy_workflow(root / "whole")
    done = snakemake(whole, "table2", *CONFIG, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]

    flow = copy_workflow(root / "flow")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with open(root / "killed.log", "w") as log:
        # its own session, as a shell started in the background: a SIGKILL of Snakemake alone
        # leaves its jobs running (the orphan of docs/running.md)
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", "table2",
                                 *CONFIG], cwd=flow, env=env, stdout=log, stderr=log,
                                start_new_session=True)

    def training() -> Path | None:
        for folder in (flow / "results/runs/table2").glob("*/seed0"):
            info = run_lock.holder(folder)
            if info and (folder / "checkpoints/latest.npz").exists():
                return folder
        return None

    wait_for(lambda: training() is not None or proc.poll() is not None, "a training under way")
    orphan = training()
    assert orphan is not None, "Snakemake ended before a training was under way"
    pid = run_lock.holder(orphan)["pid"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert run_lock.alive(pid), "the training must outlive the killed Snakemake"

    # the orphan paused while the workflow is run again, so that it is sure to be still at work
    # (a short run could finish first on a fast machine)
    os.kill(pid, signal.SIGSTOP)
    try:
        steps = {"unlock": snakemake(flow, "table2", *CONFIG, "--unlock")}
        steps["while_orphan"] = snakemake(flow, "table2", *CONFIG, "--rerun-incomplete",
                                          timeout=TIMEOUT)
        steps["orphan_alive_after"] = run_lock.alive(pid)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: not run_lock.alive(pid), "the orphan training to finish")
    steps["after"] = snakemake(flow, "table2", *CONFIG, "--rerun-incomplete", timeout=TIMEOUT)
    return {"whole": whole, "flow": flow, "orphan": orphan, "pid": pid, **steps}


@pytest.mark.slow
def test_killed_snakemake_recovers_to_the_uninterrupted_table(flows):
    assert flows["unlock"].returncode == 0, flows["unlock"].stderr[-3000:]
    second = flows["while_orphan"]
    text = second.stdout + second.stderr
    assert second.returncode != 0 and "Traceback" not in text, text[-4000:]
    assert f"another dmaml train writes this run folder: pid {flows['pid']} on host " in text
    assert flows["orphan_alive_after"], "the second job must not have stopped the orphan"
    after = flows["after"]
    assert after.returncode == 0, after.stderr[-4000:]
    for name in TABLE:
        assert (flows["flow"] / name).read_bytes() == (flows["whole"] / name).read_bytes(), name
    for name in ("test.csv", "config.yaml"):
        assert (flows["orphan"] / name).read_bytes() == (
            flows["whole"] / flows["orphan"].relative_to(flows["flow"]) / name).read_bytes()


@pytest.mark.slow
def test_a_failing_table_job_keeps_the_previous_table(flows):
    """A run folder with a step written twice: the job fails with one line naming the file and
    lines, and Snakemake puts the previous table back instead of deleting it."""
    flow = flows["flow"]
    before = {name: (flow / name).read_bytes() for name in TABLE}
    test_csv = flows["orphan"] / "test.csv"
    saved = test_csv.read_bytes()
    lines = saved.decode().splitlines(keepends=True)
    test_csv.write_text("".join([*lines, lines[-1]]))
    run_json = flows["orphan"] / "run.json"
    info = run_json.read_bytes()
    run_json.write_text(json.dumps(dict(json.loads(info), updated=time.time())))  # as written last
    try:
        failed = snakemake(flow, "table2", *CONFIG, timeout=TIMEOUT)
        assert failed.returncode != 0
        log = (flow / "logs/make_table/table2.log").read_text()
        assert f"{test_csv.relative_to(flow)}: step(s) [600] come twice (lines [3, 4])" in log
        assert "Traceback" not in log, log[-3000:]
        assert {name: (flow / name).read_bytes() for name in TABLE} == before
    finally:
        test_csv.write_bytes(saved)
        run_json.write_bytes(info)


@pytest.mark.slow
def test_training_jobs_depend_on_one_digest_of_the_training_code(flows):
    """The terminal shows one code file a job, and re-running only what changed still holds: a
    module that cannot change a number, or a module saved unchanged, re-runs no training; an
    edit of the algorithm re-runs every one."""
    flow = flows["flow"]
    shown = snakemake(flow, "-n", "table2", *CONFIG, "--forcerun", "train_dmaml")
    inputs = [line for line in shown.stdout.splitlines() if line.strip().startswith("input:")]
    assert inputs and all(".py" not in line for line in inputs[:2]), inputs[:2]
    assert "results/code/training.sha256" in shown.stdout

    def trainings() -> int:
        return planned(snakemake(flow, "-n", "table2", *CONFIG)).get("train_dmaml", 0)

    assert trainings() == 0
    with open(flow / "src/dmaml/cli.py", "a") as f:
        f.write("# an edit\n")
    os.utime(flow / "src/dmaml/maml.py")  # saved again, unchanged
    assert trainings() == 0
    with open(flow / "src/dmaml/maml.py", "a") as f:
        f.write("# an edit\n")
    assert trainings() == 2
