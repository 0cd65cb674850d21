"""The grid on a real SLURM cluster: the quick preset's Table 2 through `snakemake --profile slurm`
(the profile installed as a user installs it) on a one-node cluster started here, one training
job cancelled with `scancel` mid-run, then the same workflow run locally: same numbers.

Needs root (the cluster's daemons) and a hostname on 127.0.0.1; installs the SLURM packages with
apt-get when they are missing. Every command runs under `timeout -k`, so a SLURM that misbehaves
fails the test instead of hanging it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import OMNIGLOT_DATA, ROOT, make_omniglot_source
from .slurm.local_cluster import (
    LocalSlurm,
)
from .test_workflow import copy_workflow

pytestmark = pytest.mark.slurm

# The quick preset, shrunk to one seed, n = 1 and 2 and 60 steps (both runs use the same);
# a resume checkpoint every 10 steps gives the cancellation a checkpoint to resume from.
SMALL = """\
train:
  steps: 60
  seeds: [0]
  eval_every: 30
  test_tasks: 50
  checkpoint_steps: [30, 60]
experiments:
  table2:
    workers: [1, 2]
    checkpoint_every: 10
"""
STEPS = 60
CANCELLED = "table2/omniglot-5w1s-n2-m1-t8-mean-mean/seed0"  # the run whose job is cancelled
# its SLURM job's comment, as the plugin writes it: the rule, then the wildcard values
CANCELLED_COMMENT = "rule_train_dmaml_wildcards_table2_omniglot_5_1_2_1_8_mean_mean_0"
SLURM_LIMIT = 900  # seconds; about 150 when all is well: room for a loaded CI machine
LOCAL_LIMIT = 600  # about 90


def bounded(cmd: list[str], cwd: Path, env: dict[str, str], limit: int, out: Path):
    """Start ``cmd`` under `timeout -k` with its output to ``out``."""
    env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    with open(out, "w") as f:
        return subprocess.Popen(["timeout", "-k", "15", str(limit), *cmd], cwd=cwd, env=env,
                                stdout=f, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen) -> None:
    """Stop a command started by `bounded` (timeout passes the signal on)."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def finished(proc: subprocess.Popen, out: Path, what: str) -> str:
    """Wait for ``proc`` (bounded by its own timeout) and return its output; fail on error."""
    rc = proc.wait()
    text = out.read_text()
    assert rc not in (124, 137), f"{what} did not finish in time (killed by timeout):\n{text[-6000:]}"
    assert rc == 0, f"{what} failed ({rc}):\n{text[-6000:]}"
    return text


def cancel_when_checkpointed(cluster: LocalSlurm, proc: subprocess.Popen, out: Path,
                             run: Path) -> str:
    """Once the training in ``run`` has written checkpoints/latest.npz, `scancel` its job.
    Returns the cancelled job's id."""
    latest = run / "checkpoints" / "latest.npz"
    deadline = time.monotonic() + SLURM_LIMIT
    while not latest.exists():
        assert proc.poll() is None, ("the workflow ended before the training wrote a checkpoint:\n"
                                     + out.read_text()[-6000:])
        assert time.monotonic() < deadline, f"no {latest} in {SLURM_LIMIT} s"
        time.sleep(0.2)
    jobs = cluster.jobs()
    running = [j for j in jobs if j["state"] == "RUNNING" and j["comment"] == CANCELLED_COMMENT]
    assert len(running) == 1, f"no running job {CANCELLED_COMMENT} among {jobs}"
    subprocess.run(["timeout", "-k", "5", "20", "scancel", running[0]["id"]], env=cluster.env,
                   check=True)
    return running[0]["id"]


@pytest.fixture(scope="module")
def grid(slurm_cluster, tmp_path_factory) -> dict:
    """Table 2 run twice from the same settings: under SLURM (one training cancelled mid-run and
    retried by the profile's `retries`), then locally with the dataset the first run built."""
    root = tmp_path_factory.mktemp("grid")
    # both copies first, so that both runs use the same code
    on_slurm, local = copy_workflow(root / "on_slurm"), copy_workflow(root / "local")
    source = (OMNIGLOT_DATA if (OMNIGLOT_DATA / "images_background.zip").is_file()
              else make_omniglot_source(root / "source", 12, 8))
    (root / "small.yaml").write_text(SMALL)
    config = ["table2", "--configfile", "presets/quick.yaml", str(root / "small.yaml"),
              "--config", f"omniglot={{source: {source}}}"]
    # the profile, installed as docs/slurm.md says, under a private XDG_CONFIG_HOME
    xdg = root / "xdg"
    shutil.copytree(ROOT / "profiles" / "slurm", xdg / "snakemake" / "slurm")
    env = dict(slurm_cluster.env, XDG_CONFIG_HOME=str(xdg))

    start = time.monotonic()
    proc = bounded([sys.executable, "-m", "snakemake", "--profile", "slurm", *config], on_slurm,
                   env, SLURM_LIMIT, root / "slurm.out")
    try:
        cancelled = cancel_when_checkpointed(slurm_cluster, proc, root / "slurm.out",
                                             on_slurm / "results/runs" / CANCELLED)
    except BaseException:
        stop(proc)
        raise
    slurm_out = finished(proc, root / "slurm.out", "snakemake --profile slurm")
    slurm_s = time.monotonic() - start

    shutil.copytree(on_slurm / "resources", local / "resources")
    start = time.monotonic()
    proc = bounded([sys.executable, "-m", "snakemake", "--cores", "2", *config], local,
                   dict(os.environ), LOCAL_LIMIT, root / "local.out")
    local_out = finished(proc, root / "local.out", "the local snakemake")
    print(f"\nTable 2 on SLURM {slurm_s:.0f} s (one training cancelled and resumed), "
          f"locally {time.monotonic() - start:.0f} s (dataset reused)")
    return {"slurm": on_slurm, "local": local, "slurm_out": slurm_out, "local_out": local_out,
            "cancelled": cancelled}


def test_table2_on_slurm_equals_local(grid):
    out = grid["slurm_out"]
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", out)
    # preprocess, two trainings, the cancelled one again, the table
    assert len(submitted) == 5, out[-4000:]
    assert "localrule download_omniglot" in out  # downloads stay on the submitting machine
    for name in ("table2.csv", "table2.md"):
        assert (grid["slurm"] / "results/tables" / name).read_text() == \
            (grid["local"] / "results/tables" / name).read_text()
    table = pd.read_csv(grid["slurm"] / "results/tables/table2.csv")
    assert sorted(set(table["workers"])) == [1, 2] and sorted(set(table["step"])) == [30, 60]


def test_cancelled_training_resumes_from_its_checkpoint(grid):
    out = grid["slurm_out"]
    assert f"SLURM-job '{grid['cancelled']}' failed, SLURM status is: 'CANCELLED'" in out
    log = grid["slurm"] / f"logs/train_dmaml/{CANCELLED}.log"
    resumed = re.search(r": resuming from step (\d+)", log.read_text())
    assert resumed, "the retried job did not resume from the checkpoint"
    assert 0 < int(resumed[1]) < STEPS
    slurm, local = (grid[k] / "results/runs" / CANCELLED for k in ("slurm", "local"))
    metrics = [pd.read_csv(run / "metrics.csv").drop(columns="wall_s") for run in (slurm, local)]
    pd.testing.assert_frame_equal(*metrics, check_exact=True)
    assert (slurm / "test.csv").read_text() == (local / "test.csv").read_text()
