"""Workers across the nodes of a cluster: Ray actors, each running a stack of workers.

For an experiment whose workers outgrow one machine (``docs/engines.md``: the options weighed and
what they cost). The central learner, its merges and its checkpoints stay in the driver,
unchanged. ``actors`` Ray actors each hold the workers ``w`` with ``w % actors == a`` and run them
with the :class:`~dmaml.engines.vectorized.VectorizedEngine`, so a run costs one message per actor
(the central parameters, put once in Ray's object store, and the actor's workers' Adam states)
and one reply (their results). By default there is one actor per node of the Ray cluster; the
environment variable ``DMAML_RAY_ACTORS`` sets another count. Each actor asks Ray for an equal
share of the cluster's CPUs and uses as many TensorFlow intra-op threads.

A run's inputs all come from the driver (the central parameters, the workers' optimiser states,
which the driver's checkpoint keeps, and the step, which fixes the tasks' seeds), so an actor
holds no state between runs that matters. When an actor's process dies, Ray restarts it
(``max_restarts``) and retries its call (``max_task_retries``): its share of the run is redone
from the same inputs and the numbers equal those of a run without the crash. After ``restarts``
restarts of one actor (``DMAML_RAY_RESTARTS``, default 3) the next death is a
:class:`ClusterError` and the engine is closed; the training can then be resumed from its last
checkpoint. A lost node (its raylet gone) is such an error at once, naming the node of the
actor (the SLURM node name and Ray address the actor reported when it started, also logged):
under SLURM the job then ends (NODE_FAIL) and the workflow's retry resumes on live nodes, with the
numbers of a run that lost nothing (``tests/test_multinode.py``).

Ray: with ``RAY_ADDRESS`` set (as ``workflow/scripts/ray_srun.sh`` or ``ray symmetric-run`` set
it) the engine connects to that cluster, after ``DMAML_RAY_NODES`` nodes (default 1) have joined;
otherwise :func:`init_ray` starts a private local instance on 127.0.0.1 with the job's cores
(``cfg.threads``, else the cores this process may use), no dashboard, and a temporary folder and
authentication token of its own, which :meth:`ClusterEngine.close` shuts down. A Ray this process
is already connected to (e.g. one :func:`init_ray` shared by several engines) is used as it is and
left running.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from dmaml.config import RunConfig
from dmaml.engines import Engine, WorkerResult, cores
from dmaml.errors import ConfigError, UserError
from dmaml.optimizer import AdamState

log = logging.getLogger(__name__)

ACTORS_ENV = "DMAML_RAY_ACTORS"
RESTARTS_ENV = "DMAML_RAY_RESTARTS"
NODES_ENV = "DMAML_RAY_NODES"  # nodes to wait for, set by workflow/scripts/ray_srun.sh
DEFAULT_RESTARTS = 3
START_TIMEOUT = 300.0  # seconds for every actor to be placed and to build its engine
# Ray's default object store takes 30% of the memory; a run moves a few copies of the parameters.
LOCAL_OBJECT_STORE = 512 * 2**20


class ClusterError(UserError, RuntimeError):
    """The Ray cluster lost an actor for good, or could not start the actors."""


def _env_int(name: str, default: int | None, minimum: int) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"{name}: must be an integer >= {minimum}, got {text!r}")
    return value


def init_ray(cpus: int | None = None) -> str | None:
    """Connect this process to Ray: to the cluster at ``RAY_ADDRESS`` when it is set, else to a
    new local instance on 127.0.0.1 with ``cpus`` CPUs (default: the cores this process may use),
    no dashboard, and a temporary folder and authentication token of its own.

    Returns that folder (None for a cluster), for :func:`shutdown_ray`.
    """
    address = os.environ.get("RAY_ADDRESS")
    imported = "ray" in sys.modules
    if not address and not imported:
        # Read when Ray is imported: a single-node instance keeps every address on loopback,
        # and a token of its own spares writing one to ~/.ray.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    try:
        import ray
    except ImportError:
        raise ConfigError("engine: 'cluster' needs Ray: pip install 'dmaml[cluster]'") from None
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, configure_logging=False)
        return None
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        log.warning("ray was imported before the cluster engine: its local instance uses this "
                    "machine's network address, not 127.0.0.1")
    # Short: Ray's Unix sockets live under it (at most 107 characters).
    temp_dir = tempfile.mkdtemp(prefix="dmaml-ray-", dir="/tmp")
    cpus = cpus or cores()
    log.info("starting a local Ray instance (%d CPUs) in %s", cpus, temp_dir)
    try:
        ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 _temp_dir=temp_dir, object_store_memory=LOCAL_OBJECT_STORE,
                 configure_logging=False)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return temp_dir


def shutdown_ray(temp_dir: str | None) -> None:
    """Disconnect from Ray (stopping a local instance) and remove its temporary folder."""
    import ray

    ray.shutdown()
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


class WorkerActor:
    """One Ray actor: a stack of workers run by the vectorized engine in this process."""

    def __init__(self, cfg: RunConfig, threads: int):
        from dmaml.engines import set_threads

        set_threads(threads)  # the actors of a node share its cores
        from dmaml.engines.vectorized import VectorizedEngine

        self.engine = VectorizedEngine(cfg)

    def where(self) -> tuple[int, str]:
        """This actor's process id (a new one after a restart) and its node: the SLURM node's
        name where Ray was started in a job step (else the host name), and its Ray address."""
        import ray

        name = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        return os.getpid(), f"{name} ({ray.util.get_node_ip_address()})"

    def run(self, theta: dict, states: dict[int, AdamState],
            step: int) -> tuple[tuple[int, str], float, dict[int, WorkerResult]]:
        """Where the run was computed (:meth:`where`), its seconds, and the vectorized engine's
        results."""
        start = time.perf_counter()
        results = self.engine.run(theta, states, step)
        return self.where(), time.perf_counter() - start, results


class ClusterEngine(Engine):
    """Workers as Ray actors (see the module docstring).

    ``actors``: how many (default ``DMAML_RAY_ACTORS``, else one per node; at most
    ``cfg.workers``). ``restarts``: restarts of one actor before a death is an error (default
    ``DMAML_RAY_RESTARTS``, else 3). ``start_timeout``: seconds for the nodes to join and the
    actors to start.
    """

    def __init__(self, cfg: RunConfig, actors: int | None = None, restarts: int | None = None,
                 start_timeout: float = START_TIMEOUT):
        # Actors may run on other nodes, in another working directory.
        if cfg.data:
            cfg = dataclasses.replace(cfg, data=str(Path(cfg.data).resolve()))
        super().__init__(cfg)
        self.restart_limit = restarts if restarts is not None else _env_int(
            RESTARTS_ENV, DEFAULT_RESTARTS, 0)
        actors = actors or _env_int(ACTORS_ENV, None, 1)
        # An instance this process already uses (e.g. shared by several engines) stays as it is.
        self._owns_ray = not ("ray" in sys.modules and sys.modules["ray"].is_initialized())
        self._temp_dir = init_ray(cfg.threads or None) if self._owns_ray else None
        import ray

        self._ray = ray
        nodes = self._nodes(_env_int(NODES_ENV, 1, 1), start_timeout)
        self.count = max(1, min(actors or len(nodes), cfg.workers))
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // self.count)
        self.workers = [list(range(a, cfg.workers, self.count)) for a in range(self.count)]
        self.restarts = [0] * self.count  # restarts seen per actor
        self.last_compute: list[float] = []  # seconds each busy actor computed in the last run
        remote = ray.remote(WorkerActor).options(
            num_cpus=cpus, max_restarts=self.restart_limit, max_task_retries=self.restart_limit,
            scheduling_strategy="SPREAD")
        self.actors: list = [remote.remote(self.cfg, cpus) for _ in range(self.count)]
        try:
            self.pids, self.nodes = map(list, zip(*ray.get(
                [a.where.remote() for a in self.actors], timeout=start_timeout)))
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ClusterError(
                f"the {self.count} Ray actors of {cpus} CPU(s) each were not all running after "
                f"{start_timeout:.0f} s; the cluster has {len(nodes)} node(s) and "
                f"{ray.cluster_resources().get('CPU', 0):.0f} CPUs: set {ACTORS_ENV} lower or give "
                "the job more nodes") from None
        except ray.exceptions.RayError as e:
            self.close()
            raise ClusterError(f"the Ray actors could not start: {_first_line(e)}") from None
        log.info("cluster engine: %d Ray actors x %d CPUs on %d node(s) (%s) for %d workers "
                 "(up to %d restarts each); actors on %s", self.count, cpus, len(nodes),
                 ", ".join(sorted(n["NodeManagerAddress"] for n in nodes)), cfg.workers,
                 self.restart_limit, ", ".join(self.nodes))

    def _nodes(self, expected: int, timeout: float) -> list[dict]:
        """The cluster's live nodes, once ``expected`` of them have joined."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = [n for n in self._ray.nodes() if n["Alive"]]
            if len(nodes) >= expected:
                return nodes
            if time.monotonic() > deadline:
                self.close()
                raise ClusterError(f"{len(nodes)} of {expected} Ray nodes had joined after "
                                   f"{timeout:.0f} s")
            time.sleep(1)

    def run(self, theta, states, step):
        ray = self._ray
        if not self.actors:
            raise ClusterError("the cluster engine is closed")
        theta_ref = ray.put(theta)
        calls = {}
        for a, workers in enumerate(self.workers):
            mine = {w: states[w] for w in workers if w in states}
            if mine:
                calls[a] = self.actors[a].run.remote(theta_ref, mine, step)
        results, self.last_compute = {}, []
        for a, call in calls.items():
            try:
                (pid, node), seconds, part = ray.get(call)
            except ray.exceptions.RayTaskError:
                raise  # an error of the computation itself (it is also an instance of its cause)
            except ray.exceptions.RayError as e:
                self.close()
                raise ClusterError(
                    f"Ray actor {a} (workers {self.workers[a]}) on node {self.nodes[a]} was lost "
                    f"in the run from MAML step {step} after {self.restarts[a]} restart(s) "
                    f"(limit {self.restart_limit}, {RESTARTS_ENV}): {_first_line(e)}; the engine "
                    "is closed. Run training again: it resumes from the last checkpoint") from None
            if pid != self.pids[a]:
                # A restart between or during runs: the call was redone from the same inputs.
                self.pids[a], self.nodes[a] = pid, node
                self.restarts[a] += 1
                log.warning("Ray actor %d (workers %s) was restarted on %s (%d of %d); its share "
                            "of the run from step %d was redone", a, self.workers[a], node,
                            self.restarts[a], self.restart_limit, step)
            self.last_compute.append(seconds)
            results.update(part)
        return results

    def close(self) -> None:
        """Stop the actors; shut down the local Ray instance if this engine started one. Safe to
        call twice."""
        ray, actors = self._ray, getattr(self, "actors", [])
        self.actors = []
        if ray is None:
            return
        if ray.is_initialized():
            for actor in actors:
                ray.kill(actor)
        if self._owns_ray:
            shutdown_ray(self._temp_dir)
            self._owns_ray, self._temp_dir = False, None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
