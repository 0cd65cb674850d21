"""The cluster engine across the nodes of a real SLURM cluster of 2 nodes on this machine
(tests/slurm/local_cluster.py: two slurmd on the loopback aliases 127.0.0.2 and 127.0.0.3):
`dmaml train --engine cluster` through `sbatch --nodes=2 workflow/scripts/ray_srun.sh` places its
actors on both nodes and gives the sequential engine's numbers.

Needs root (the cluster's daemons), a hostname on 127.0.0.1 and Ray; installs the SLURM packages
with apt-get when they are missing. Every command runs under `timeout -k`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT
from .slurm.local_cluster import (
    ClusterUnavailable,
    LocalSlurm,
    install_packages,
    unavailable_reason,
)
from .test_cluster import assert_like_sequential

pytestmark = pytest.mark.slurm
if importlib.util.find_spec("ray") is None:
    pytest.skip("Ray is not installed (pip install 'dmaml[cluster]')", allow_module_level=True)

NODES = {"dmaml-n0": "127.0.0.2", "dmaml-n1": "127.0.0.3"}
LAUNCHER = ROOT / "workflow" / "scripts" / "ray_srun.sh"
JOB_LIMIT = 600  # seconds for one training job; about 60 when all is well
# 3 workers as 2 actors ([0, 2] and [1]), one per node
RUN = """\
dataset: sine
workers: 3
steps_per_run: 2
steps: 6
beta: 0.001
eval_every: 2
val_tasks: 5
test_tasks: 5
checkpoint_steps: []
"""


@pytest.fixture(scope="module")
def cluster():
    """A private SLURM cluster of 2 nodes (one at a time on the machine), skipped with the
    reason where this machine cannot run one."""
    reason = unavailable_reason(len(NODES))
    if reason:
        pytest.skip(reason)
    try:
        install_packages()
        local = LocalSlurm(nodes=len(NODES))
        local.start()
    except ClusterUnavailable as e:
        pytest.skip(f"no local SLURM cluster: {e}")
    assert local.nodes == NODES
    try:
        yield local
    finally:
        local.stop()


def environment(cluster: LocalSlurm) -> dict[str, str]:
    """The cluster's environment with this interpreter's bin folder (ray, dmaml) on PATH."""
    return dict(cluster.env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def sbatch(cluster: LocalSlurm, args: list[str], log: Path, wait: bool = True,
           limit: int = JOB_LIMIT) -> str:
    """Submit a job (its output to ``log``); with ``wait``, until it ends, which must be
    successfully. Returns the job id."""
    done = subprocess.run(
        ["timeout", "-k", "15", str(limit), "sbatch", "--parsable", f"--output={log}",
         f"--time={limit // 60 + 1}", *(["--wait"] if wait else []), *args],
        env=environment(cluster), capture_output=True, text=True)
    text = log.read_text() if log.exists() else ""
    assert done.returncode == 0, f"sbatch ({done.returncode}): {done.stderr}\n{text[-6000:]}"
    return done.stdout.strip().split(";")[0]


def train_job(run: Path, config: Path) -> list[str]:
    """sbatch arguments of a 2-node job training ``run`` with the cluster engine."""
    config.write_text(RUN)
    return ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", str(LAUNCHER),
            sys.executable, "-m", "dmaml.cli", "train", "--engine", "cluster", "--config",
            str(config), "--out", str(run)]


def test_training_across_two_nodes_equals_sequential(cluster, tmp_path):
    """Ray's head on node 0, a worker node joining from node 1, an actor on each; the run's
    numbers are the sequential engine's."""
    log = tmp_path / "job.log"
    sbatch(cluster, train_job(tmp_path / "run", tmp_path / "run.yaml"), log)
    text = log.read_text()
    assert "Ray head at 127.0.0.2:" in text and "on dmaml-n0, 2 node(s)" in text, text
    placed = re.search(r"cluster engine: 2 Ray actors x 1 CPUs on 2 node\(s\) \(([^)]*)\).*"
                       r"actors on (.*)", text)
    assert placed, text
    assert placed[1] == "127.0.0.2, 127.0.0.3"
    assert sorted(placed[2].split(", ")) == ["127.0.0.2", "127.0.0.3"]  # one actor per node
    assert_like_sequential(tmp_path / "run", tmp_path / "sequential")
