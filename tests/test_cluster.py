"""The cluster engine (Ray actors): the sequential engine's numbers with 2 actors on a local Ray
instance; an actor killed mid-run is restarted and its share redone, with unchanged numbers; an
actor lost for good is a clear error, not a hang; the training rule asks SLURM for the nodes of
`engine: cluster` jobs; and `engine: cluster` training through the workflow on a real one-node
SLURM cluster (workflow/scripts/ray_srun.sh, `srun`) gives the sequential engine's numbers.

One local Ray instance serves the module (``ray.init`` costs about 10 s). Needs the `cluster`
extra (Ray); the SLURM test also needs root and a hostname on 127.0.0.1, like tests/test_slurm.py.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmaml import checkpoint
from dmaml.engines.cluster import ClusterEngine, ClusterError, init_ray, shutdown_ray
from dmaml.engines.sequential import SequentialEngine
from dmaml.learner import Learner
from dmaml.run_folder import config_of

from .conftest import ROOT, make_h5
from .test_engines import assert_same, settings, start

if importlib.util.find_spec("ray") is None:
    pytest.skip("Ray is not installed (pip install 'dmaml[cluster]')", allow_module_level=True)

HANG = 180  # seconds after which a run counts as hung


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance (2 CPUs) for the module's engines, which use it one at a time."""
    temp_dir = init_ray(2)
    yield
    shutdown_ray(temp_dir)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return {"omniglot": make_h5(tmp_path_factory.mktemp("cluster") / "omniglot.h5", classes=8,
                                per_class=4, size=28)}


@pytest.mark.parametrize("dataset", ["sine", pytest.param("omniglot", marks=pytest.mark.slow)])
def test_cluster_equals_sequential(ray_instance, data, dataset):
    """Two runs: from fresh states, then on from the first run's."""
    cfg = settings(dataset, data)
    cluster, sequential = ClusterEngine(cfg, actors=2), SequentialEngine(cfg)
    try:
        assert cluster.count == 2 and cluster.workers == [[0, 2], [1]]
        theta, states = start(cfg, 3)
        first = cluster.run(theta, states, 0)
        assert_same(first, sequential.run(theta, states, 0), cfg)
        states = {w: r.opt_state for w, r in first.items()}
        assert_same(cluster.run(first[0].params, states, 2),
                    sequential.run(first[0].params, states, 2), cfg)
    finally:
        cluster.close()
        sequential.close()


def identical(a: dict, b: dict) -> None:
    """Bit for bit: the same computation on the same inputs, in another process."""
    assert sorted(a) == sorted(b)
    for w in a:
        assert a[w].loss == b[w].loss and a[w].metric == b[w].metric
        for k in a[w].params:
            np.testing.assert_array_equal(a[w].params[k], b[w].params[k])
            np.testing.assert_array_equal(a[w].opt_state.m[k], b[w].opt_state.m[k])
            np.testing.assert_array_equal(a[w].opt_state.v[k], b[w].opt_state.v[k])


def bounded(engine: ClusterEngine, theta, states, step: int, kill: int | None = None):
    """``engine.run`` in a thread (so that a hang fails the test); with ``kill``, SIGKILL that
    actor's process 1 s into the run: with a new engine, the actor is compiling its step then."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(engine.run, theta, states, step)
        if kill is not None:
            time.sleep(1)
            os.kill(engine.pids[kill], signal.SIGKILL)
        return future.result(timeout=HANG)


@pytest.mark.slow
def test_killed_actor_is_replaced_then_too_many_deaths_stop(ray_instance, data):
    """The first run (compiling) loses actor 1 and still equals the next run without a crash;
    with one restart allowed, actor 1's second death stops the engine."""
    cfg = settings("sine", data)
    theta, states = start(cfg, 3)
    engine = ClusterEngine(cfg, actors=2, restarts=1)
    try:
        before = list(engine.pids)
        crashed = bounded(engine, theta, states, 0, kill=1)
        assert engine.restarts == [0, 1] and engine.pids[0] == before[0] != engine.pids[1]
        identical(crashed, bounded(engine, theta, states, 0))
        os.kill(engine.pids[1], signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(ClusterError, match=r"actor 1 \(workers \[1\]\) on node .* \(127.0.0.1\) "
                                               r"was lost in the run from MAML step 0 after 1 "
                                               r"restart"):
            bounded(engine, theta, states, 0)
        assert time.monotonic() - started < 60
        with pytest.raises(ClusterError, match="closed"):
            engine.run(theta, states, 0)
    finally:
        engine.close()


# --- on SLURM ---------------------------------------------------------------------------------


def test_cluster_training_jobs_span_nodes(tmp_path):
    """`engine: cluster` with `cluster_nodes: 2`: the training job asks SLURM for 2 nodes, one
    task each started by its own srun (mpi), through the launcher; other engines are unchanged."""
    pytest.importorskip("snakemake")
    from .test_workflow import copy_workflow, snakemake

    workflow = copy_workflow(tmp_path / "workflow")
    target = "results/runs/table1/sine-1w10s-n4-m1-t10-mean-mean/seed0/run.json"
    jobs = {}
    for name, config in (("cluster", ["train={engine: cluster}", "cluster_nodes=2"]),
                         ("default", ["cluster_nodes=2"])):
        done = snakemake(workflow, "-n", "-p", target, "--config", *config)
        assert done.returncode == 0, done.stderr[-3000:]
        jobs[name] = done.stdout.split("rule train_dmaml:")[1]
    assert "nodes=2, tasks=2, mpi=srun" in jobs["cluster"]
    assert "workflow/scripts/ray_srun.sh python -m dmaml.cli train" in jobs["cluster"]
    assert "nodes=" not in jobs["default"] and "mpi" not in jobs["default"]
    assert "Shell command: python -m dmaml.cli train" in jobs["default"]


EXPERIMENT = """\
train_threads: 2  # the test node's cores
train:
  engine: cluster
  steps: 6
  seeds: [0]
  eval_every: 2
  val_tasks: 5
  test_tasks: 5
  checkpoint_steps: []
experiments:
  clus:
    dataset: sine
    workers: 3
    steps_per_run: 2
    beta: 0.001
"""
RUN = "results/runs/clus/sine-1w10s-n3-m2-t10-mean-mean/seed0"
SLURM_LIMIT = 600  # seconds; about 60 when all is well: room for a loaded CI machine


@pytest.mark.slurm
def test_cluster_training_on_slurm_equals_sequential(slurm_cluster, tmp_path):
    """The training rule with `engine: cluster` through `snakemake --profile slurm`: the job runs
    ray_srun.sh, whose `srun` starts the Ray head (on 127.0.0.1) and the training as its driver,
    with 2 actors; then the same settings in this process with the sequential engine."""
    pytest.importorskip("snakemake")
    from .test_workflow import copy_workflow

    workflow = copy_workflow(tmp_path / "workflow")
    (tmp_path / "clus.yaml").write_text(EXPERIMENT)
    xdg = tmp_path / "xdg"
    shutil.copytree(ROOT / "profiles" / "slurm", xdg / "snakemake" / "slurm")
    env = dict(slurm_cluster.env, XDG_CONFIG_HOME=str(xdg), DMAML_RAY_ACTORS="2",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = ["timeout", "-k", "15", str(SLURM_LIMIT), sys.executable, "-m", "snakemake",
           "--profile", "slurm", f"{RUN}/run.json", "--configfile", str(tmp_path / "clus.yaml")]
    done = subprocess.run(cmd, cwd=workflow, env=env, capture_output=True, text=True)
    log = workflow / "logs/train_dmaml/clus/sine-1w10s-n3-m2-t10-mean-mean/seed0.log"
    text = log.read_text() if log.exists() else ""
    assert done.returncode == 0, f"snakemake ({done.returncode}):\n{done.stderr[-4000:]}\n{text}"
    assert "Ray head at 127.0.0.1:" in text, text
    assert "cluster engine: 2 Ray actors x 1 CPUs on 1 node(s) (127.0.0.1)" in text, text

    assert_like_sequential(workflow / RUN, tmp_path / "sequential")


def assert_like_sequential(cluster_run: Path, out: Path) -> None:
    """The run in ``cluster_run`` (a cluster engine's) trained again in ``out`` with the
    sequential engine: the same metrics and parameters, to the engines' tolerance."""
    cfg = config_of(cluster_run)
    cfg.engine, cfg.threads = "sequential", 0
    Learner(cfg, out).train()
    metrics = [pd.read_csv(run / "metrics.csv") for run in (cluster_run, out)]
    assert list(metrics[0]["step"]) == list(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every))
    for column in ("train_loss", "val_loss"):  # continuous in the parameters: round-off only
        np.testing.assert_allclose(metrics[0][column], metrics[1][column], rtol=1e-4)
    thetas = [checkpoint.unpack("theta", checkpoint.load(run / "checkpoints/latest.npz"))
              for run in (cluster_run, out)]
    for k, p in thetas[1].items():
        # Adam's sign(g) steps: a few elements may differ by up to beta per MAML step (the
        # bounds of test_engines.assert_same)
        off = np.abs(thetas[0][k] - p)
        assert off.max() <= 2 * cfg.beta * cfg.steps and np.sum(off > 1e-5) <= max(2, 0.01 * off.size)


@pytest.mark.slow  # two minutes: Ray actors compile the probe (test_cluster_equals_sequential is fast)
def test_cluster_merges_by_the_sequential_probe_scores(ray_instance, data, tmp_path):
    """weighted through the cluster engine: the sequential engine's worker scores, weights and
    merged parameters (the probe runs in the learner, on what the actors return)."""
    from .test_learner import rows, theta_of

    cfg = settings("omniglot", data, merge="weighted", merge_probe_tasks=4, steps=2, eval_every=2,
                   val_tasks=2, test_tasks=0, checkpoint_steps=[], tensorboard=False)
    for label, engine in (("sequential", SequentialEngine(cfg)),
                          ("cluster", ClusterEngine(cfg, actors=2))):
        Learner(cfg, tmp_path / label, engine=engine).train()
    ref, got = (rows(tmp_path / label / "worker_scores.csv", drop=())
                for label in ("sequential", "cluster"))
    assert [(r["step"], r["worker"]) for r in got] == [(r["step"], r["worker"]) for r in ref]
    # one run: later runs start from parameters that differ by the kinks above, which near-zero
    # losses magnify; a weight moves by a score's difference over the scores' spread
    for column, rel in (("score", 1e-4), ("weight", 1e-2)):
        np.testing.assert_allclose([float(r[column]) for r in got],
                                   [float(r[column]) for r in ref], rtol=rel)
    for k, p in theta_of(tmp_path / "sequential").items():
        assert np.abs(theta_of(tmp_path / "cluster")[k] - p).max() <= 2 * cfg.beta * cfg.steps, k
