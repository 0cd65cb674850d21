"""The cluster engine across the nodes of a real SLURM cluster of 3 nodes on this machine
(tests/slurm/local_cluster.py: slurmds on the loopback aliases 127.0.0.2, 127.0.0.3, 127.0.0.4):
`dmaml train --engine cluster` through `sbatch --nodes=2 workflow/scripts/ray_srun.sh` places its
actors on both nodes and gives the sequential engine's numbers; Table 1 through `snakemake
--profile slurm` with `cluster_nodes: 2` loses a node mid-run (its slurmd, slurmstepd and Ray
killed), fails with one line naming it, and Snakemake's retry resumes on live nodes, bitwise equal
to a local run; two Ray jobs on one node have their own ports, temporary folders and tokens, and
cancelling one leaves the other's Ray running.

Needs root (the cluster's daemons), a hostname on 127.0.0.1 and Ray; installs the SLURM packages
with apt-get when they are missing. Every command runs under `timeout -k`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import ROOT
from .slurm.local_cluster import (
    ClusterUnavailable,
    LocalSlurm,
    install_packages,
    unavailable_reason,
)
from .test_cluster import assert_like_sequential
from .test_slurm import bounded, finished, stop
from .test_workflow import copy_workflow

pytestmark = pytest.mark.slurm
if importlib.util.find_spec("ray") is None:
    pytest.skip("Ray is not installed (pip install 'dmaml[cluster]')", allow_module_level=True)

# two for a job, a third for the job that loses one
NODES = {"dmaml-n0": "127.0.0.2", "dmaml-n1": "127.0.0.3", "dmaml-n2": "127.0.0.4"}
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
    """The cluster's environment with this interpreter's bin folder (ray, dmaml) on PATH, and
    the single-node Ray setting that a local cluster-engine run leaves in its process (as in this
    test session): SLURM passes it on to the job, where it must not stop nodes from joining."""
    return dict(cluster.env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")


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
    # one actor per node
    assert sorted(placed[2].split(", ")) == ["dmaml-n0 (127.0.0.2)", "dmaml-n1 (127.0.0.3)"]
    # its end not held up by Ray's drain on SIGTERM (up to 30 s on each node)
    assert "Draining for up to" not in text, text
    assert_like_sequential(tmp_path / "run", tmp_path / "sequential")


# --- the workflow -------------------------------------------------------------------------------

# Table 1 of one sine run (n = 3, two actors), trained on 2 nodes; long enough (~5 s of training
# after its first checkpoint) for a node to be lost mid-run.
WORKFLOW = """\
train_threads: 2
cluster_nodes: 2
train:
  engine: cluster
  steps: 300
  seeds: [0]
  eval_every: 10
  val_tasks: 5
  test_tasks: 20
experiments:
  table1:
    workers: [3]
    steps_per_run: 2
    checkpoint_every: 10
    test_shots: [5]
"""
TRAINED = "table1/sine-1w10s-n3-m2-t10-mean-mean/seed0"
WORKFLOW_LIMIT = 900  # seconds; about 150 when all is well (a node lost, the job retried)


@pytest.fixture(scope="module")
def table1(cluster, tmp_path_factory) -> dict:
    """Table 1 through `snakemake --profile slurm` with its training job on 2 nodes, the job's
    second node killed (slurmd, slurmstepd, Ray) once the run has a checkpoint, the job retried
    by the profile's `retries` on the surviving node and the spare; then the same locally (a local
    Ray instance, also two actors)."""
    root = tmp_path_factory.mktemp("table1")
    on_slurm, local = copy_workflow(root / "on_slurm"), copy_workflow(root / "local")
    (root / "table1.yaml").write_text(WORKFLOW)
    config = ["table1", "--configfile", str(root / "table1.yaml")]
    xdg = root / "xdg"
    shutil.copytree(ROOT / "profiles" / "slurm", xdg / "snakemake" / "slurm")
    env = dict(environment(cluster), XDG_CONFIG_HOME=str(xdg), DMAML_RAY_ACTORS="2")
    proc = bounded([sys.executable, "-m", "snakemake", "--profile", "slurm", *config], on_slurm,
                   env, WORKFLOW_LIMIT, root / "slurm.out")
    try:
        latest = on_slurm / "results/runs" / TRAINED / "checkpoints/latest.npz"
        deadline = time.monotonic() + WORKFLOW_LIMIT
        while not latest.exists():
            assert proc.poll() is None, "snakemake ended before the training wrote a checkpoint:" \
                f"\n{(root / 'slurm.out').read_text()[-6000:]}"
            assert time.monotonic() < deadline, f"no {latest} in {WORKFLOW_LIMIT} s"
            time.sleep(0.2)
        killed = cluster.kill_node("dmaml-n1")
    except BaseException:
        stop(proc)
        raise
    slurm_out = finished(proc, root / "slurm.out", "snakemake --profile slurm")
    cluster.start_node("dmaml-n1")  # back for the other tests
    proc = bounded([sys.executable, "-m", "snakemake", "--cores", "2", *config], local,
                   dict(os.environ, DMAML_RAY_ACTORS="2"), WORKFLOW_LIMIT, root / "local.out")
    finished(proc, root / "local.out", "the local snakemake")
    assert killed
    # the failed job's output is kept in its SLURM log; the rule's log is the retry's
    first = min(on_slurm.glob("logs/slurm/rule_train_dmaml/*/*.log"), key=lambda p: int(p.stem))
    # what the lost node could not clean up: its Ray folder (ray_srun.sh's /tmp/ray-JOB-NODE)
    shutil.rmtree(f"/tmp/ray-{first.stem}-1", ignore_errors=True)
    return {"slurm": on_slurm, "local": local, "slurm_out": slurm_out, "first": first.read_text(),
            "log": (on_slurm / f"logs/train_dmaml/{TRAINED}.log").read_text()}


def actors(log: str) -> list[list[str]]:
    """The nodes of the cluster engine's actors, each time it started, from a training log."""
    return [sorted(line.split(", ")) for line in re.findall(r"cluster engine: .*; actors on (.*)",
                                                            log)]


def test_workflow_job_spans_two_nodes_and_its_table_equals_local(table1):
    assert actors(table1["first"]) == [["dmaml-n0 (127.0.0.2)", "dmaml-n1 (127.0.0.3)"]]
    for name in ("table1.csv", "table1.md"):
        assert (table1["slurm"] / "results/tables" / name).read_text() == \
            (table1["local"] / "results/tables" / name).read_text()


def test_lost_node_fails_the_job_and_the_retry_resumes_bitwise(table1):
    """The project's behaviour on a lost node: the training fails at once with one line naming
    the node, SLURM ends the job (NODE_FAIL), and Snakemake's retry, which leaves the failed node
    out, resumes from the last checkpoint, with the numbers of a run that lost nothing."""
    lost = re.findall(r"ERROR Ray actor \d \(workers \[[\d, ]+\]\) on node dmaml-n1 "
                      r"\(127\.0\.0\.3\) was lost in the run from MAML step \d+ .*", table1["first"])
    assert len(lost) == 1, table1["first"]
    assert "SLURM status is: 'NODE_FAIL'" in table1["slurm_out"]
    log = table1["log"]  # the retry's
    resumed = re.search(r": resuming from step (\d+)", log)
    assert resumed and 0 < int(resumed[1]) < 300, log
    assert actors(log) == [["dmaml-n0 (127.0.0.2)", "dmaml-n2 (127.0.0.4)"]]
    slurm, local = (table1[k] / "results/runs" / TRAINED for k in ("slurm", "local"))
    metrics = [pd.read_csv(run / "metrics.csv").drop(columns="wall_s") for run in (slurm, local)]
    pd.testing.assert_frame_equal(*metrics, check_exact=True)
    assert (slurm / "test.csv").read_text() == (local / "test.csv").read_text()


# --- two jobs on one node -----------------------------------------------------------------------

# A Ray driver that pings its cluster until told to stop: ARG.ready holds its Ray address, temp
# folder and token once it runs; ARG.stop tells it to end; ARG says it still reached Ray then.
DRIVER = """\
import hashlib, os, pathlib, sys, time
import ray
out = pathlib.Path(sys.argv[1])
ray.init()


@ray.remote
def ping():
    return os.getpid()


ray.get(ping.remote(), timeout=60)
token = hashlib.sha256(os.environ["RAY_AUTH_TOKEN"].encode()).hexdigest()
temp = ray.get_runtime_context().get_temp_dir()
out.with_suffix(".ready").write_text(f"{os.environ['RAY_ADDRESS']} {temp} {token}")
while not out.with_suffix(".stop").exists():
    ray.get(ping.remote(), timeout=60)
    time.sleep(0.5)
ray.get(ping.remote(), timeout=60)
out.write_text("alive")
"""


ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")


def state(cluster: LocalSlurm, job: str) -> str | None:
    return next((j["state"] for j in cluster.jobs() if j["id"] == job), None)


def wait_until(what: str, check, cluster: LocalSlurm, ids: list[str]) -> None:
    """Wait for ``check()``; fail when it is not so after JOB_LIMIT s, or as soon as none of the
    jobs ``ids`` is queued or running."""
    deadline = time.monotonic() + JOB_LIMIT
    while not check():
        active = [i for i in ids if state(cluster, i) in ACTIVE]
        assert active and time.monotonic() < deadline, f"{what} (jobs {cluster.jobs()})"
        time.sleep(0.5)


def test_two_jobs_on_one_node_do_not_collide(cluster, tmp_path):
    """Two one-node Ray jobs on the same node at once: their own ports, temporary folders and
    tokens; `scancel` of one stops its Ray only, the other's goes on and ends well."""
    (tmp_path / "driver.py").write_text(DRIVER)
    ids = [sbatch(cluster, ["--nodes=1", "--ntasks=1", "--cpus-per-task=1", "--nodelist=dmaml-n0",
                            str(LAUNCHER), sys.executable, str(tmp_path / "driver.py"),
                            str(tmp_path / name)], tmp_path / f"{name}.log", wait=False)
           for name in ("a", "b")]
    ready = [tmp_path / f"{name}.ready" for name in ("a", "b")]
    wait_until("the two drivers were not both running", lambda: all(r.exists() for r in ready),
               cluster, ids)
    (address_a, temp_a, token_a), (address_b, temp_b, token_b) = (r.read_text().split()
                                                                  for r in ready)
    assert address_a.split(":")[0] == address_b.split(":")[0] == "127.0.0.2"
    assert address_a != address_b and temp_a != temp_b and token_a != token_b
    assert Path(temp_a).exists() and Path(temp_b).exists()

    subprocess.run(["timeout", "-k", "5", "20", "scancel", ids[0]], env=cluster.env, check=True)
    wait_until("the cancelled job or its Ray was still there", lambda: not Path(temp_a).exists()
               and state(cluster, ids[0]) == "CANCELLED",
               cluster, ids)
    (tmp_path / "b.stop").touch()
    wait_until("the other job did not end", lambda: state(cluster, ids[1]) not in ACTIVE,
               cluster, ids)
    assert (tmp_path / "b").read_text() == "alive", (tmp_path / "b.log").read_text()[-4000:]
    assert state(cluster, ids[1]) == "COMPLETED", (tmp_path / "b.log").read_text()[-4000:]
