"""A private SLURM cluster on this machine, for tests: munge, slurmctld and one slurmd per node,
started as root without systemd (what it sets up and why: docs/testing.md).

One node (the default) is this machine by its hostname on 127.0.0.1. ``nodes=N`` > 1 makes N
compute nodes ``dmaml-n0`` ... on loopback aliases: node i is a slurmd started with ``-N
dmaml-ni``, its own SlurmdPort, spool, log and pid file (``%n`` in slurm.conf), and its own
address ``NodeAddr=127.0.0.{i + 2}`` (slurmctld stays on 127.0.0.1). Linux routes all of
127.0.0.0/8 to the loopback device, so these addresses need no set-up and no ``ip``: Debian's
slurmd (22.05, built without --enable-multiple-slurmd) still runs several daemons on one host
this way, each answering on its own port; the simpler route than network namespaces, and all
traffic stays on loopback. What runs on a node tells it apart by ``SLURMD_NODENAME`` and that
node's NodeAddr (``scontrol show node``); ``hostname`` is the same on all of them, and they share
this machine's file system, so a job's per-node files need the node's name in their path.
A lost node (:meth:`LocalSlurm.kill_node`) is DOWN after about 30 s (``SlurmdTimeout=10``, not
300) and its jobs end with NODE_FAIL; they are not requeued (``JobRequeue=0``: a requeued job
would wait 121 s, CredExpire + 1), so that Snakemake's retry submits them again at once.

Every file (key, sockets, state, logs, pid files, slurm.conf) lives in one short temporary
folder, the daemons listen on ports of their own, and they are stopped by the pids in their pid
files, each checked against its command line first; what their jobs left running is found by
``SLURM_CONF=<this folder's slurm.conf>`` in its environment; nothing is ever killed by name. The only file
outside the folder is the symlink ``/etc/slurm/slurm.conf`` -> the folder's config, needed because
the Snakemake jobstep plugin strips SLURM_CONF before its inner ``srun``; it is made only where no
other file is there, and removed again at the end. A lock file lets one such cluster run at a
time on the machine; the clusters of owners that died (folders /tmp/dmaml-slurm-*, their daemons
perhaps still up) are stopped and removed by the next one.

From Python::

    with LocalSlurm() as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env, check=True)

From a shell, a command inside a cluster started for it, and stopped when it ends::

    python tests/slurm/local_cluster.py -- sinfo
    python tests/slurm/local_cluster.py --nodes 2 -- sinfo -N -h
    python tests/slurm/local_cluster.py --stop /tmp/dmaml-slurm-XXXX   # leftovers of a killed run
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
PROGRAMS = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel"]
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
LOCK = Path(tempfile.gettempdir()) / "dmaml-local-slurm.lock"
PREFIX = "dmaml-slurm-"
MARKER = "# dmaml local_cluster"
NODE_PREFIX = "dmaml-n"  # node names of a cluster of several nodes
NODE_ENV = "DMAML_SLURM_NODE"  # in a slurmd's environment (and its slurmstepds'): its node


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the private cluster (not root, hostname not on loopback, packages
    missing, a SLURM configuration of someone else's in /etc/slurm)."""


class ClusterError(RuntimeError):
    """A daemon did not start or did not answer in time."""


def unavailable_reason(nodes: int = 1) -> str | None:
    """Why this machine cannot run the cluster of ``nodes`` nodes, or None when it can (packages
    aside)."""
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (its daemons run as root, without systemd)"
    host = socket.gethostname().split(".")[0]
    try:
        address = socket.gethostbyname(host)
    except OSError as e:
        return f"hostname {host!r} does not resolve ({e}); the one-node cluster needs it on 127.0.0.1"
    if not address.startswith("127."):
        return (f"hostname {host!r} resolves to {address}, not to loopback; the one-node cluster "
                "must not listen or be reached on another address")
    if nodes > 1:
        try:
            with socket.socket() as s:
                s.bind((f"127.0.0.{nodes + 1}", 0))
        except OSError as e:
            return (f"cannot bind loopback alias 127.0.0.{nodes + 1} ({e}); the nodes of a "
                    "cluster of several nodes have the addresses 127.0.0.2 ...")
    return None


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None]


def install_packages(timeout: int = 600) -> None:
    """apt-get install the SLURM and munge packages when some program is missing (as root)."""
    if not missing_programs():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"SLURM programs missing ({', '.join(missing_programs())}) and "
                                 "no apt-get as root to install them: apt-get install "
                                 + " ".join(PACKAGES))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        try:
            done = subprocess.run(["timeout", "-k", "10", str(timeout), *cmd], env=env,
                                  capture_output=True, text=True)
        except OSError as e:
            raise ClusterUnavailable(f"{' '.join(cmd)}: {e}") from None
        if done.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(cmd)} failed ({done.returncode}): "
                                     f"{(done.stderr or done.stdout)[-1000:]}")
    if missing_programs():
        raise ClusterUnavailable(f"still missing after apt-get: {', '.join(missing_programs())}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterError("no MemTotal in /proc/meminfo")


def pid_of(folder: Path, daemon: str, pid_file: str) -> int | None:
    """The pid in a daemon's pid file, if that process is alive and is this folder's daemon
    (its command line names the daemon and a path in the folder)."""
    try:
        pid = int((folder / pid_file).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return None
    args = cmdline.split("\0")
    if Path(args[0]).name == daemon and str(folder) in cmdline:
        return pid
    return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for(what: str, check, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise ClusterError(f"{what} (waited {timeout:.0f} s){tail}")


class LocalSlurm:
    """munge + slurmctld + slurmd on 127.0.0.1 with every file in ``folder``, a new short
    temporary folder removed at the end. ``env`` is the environment for SLURM commands
    (SLURM_CONF set)."""

    def __init__(self, nodes: int = 1, lock_timeout: float = 600, start_timeout: float = 60):
        if nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {nodes}")
        self.folder: Path | None = None
        self.lock_timeout = lock_timeout
        self.start_timeout = start_timeout
        self.host = socket.gethostname().split(".")[0]
        # node name -> address
        self.nodes = ({self.host: "127.0.0.1"} if nodes == 1 else
                      {f"{NODE_PREFIX}{i}": f"127.0.0.{i + 2}" for i in range(nodes)})
        self._lock: int | None = None  # file descriptor of LOCK, held while the cluster runs
        self._linked = False

    # --- paths --------------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def socket(self) -> Path:
        return self.folder / "run" / "munge.socket.2"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    # --- start and stop -----------------------------------------------------------------------
    def __enter__(self) -> LocalSlurm:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        reason = unavailable_reason(len(self.nodes))
        if reason:
            raise ClusterUnavailable(reason)
        self._take_lock()
        try:
            self._claim_system_conf()
            for stale in Path("/tmp").glob(f"{PREFIX}*"):  # we hold the lock: their owner died
                stop_cluster(stale)
                shutil.rmtree(stale, ignore_errors=True)
            self.folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
            self._write_files()
            self._link_system_conf()
            self._start_munge()
            self._start_slurm()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel this cluster's jobs, stop its daemons by their pid files, remove the symlink
        and the folder. Safe to call twice."""
        try:
            if self.folder is not None and self.folder.exists():
                stop_cluster(self.folder)
        finally:
            if self._linked and SYSTEM_CONF.is_symlink() and \
                    Path(os.readlink(SYSTEM_CONF)) == self.conf:
                SYSTEM_CONF.unlink()
            self._linked = False
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = None
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    def _take_lock(self) -> None:
        self._lock = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self._lock)
                    self._lock = None
                    raise ClusterError(f"another local SLURM cluster held {LOCK} for "
                                       f"{self.lock_timeout:.0f} s; one runs at a time") from None
                time.sleep(1)

    def _claim_system_conf(self) -> None:
        """Make /etc/slurm/slurm.conf free for our symlink: stop a dead owner's cluster that it
        still points to (we hold the lock, so its owner is gone); refuse anyone else's file."""
        if not SYSTEM_CONF.is_symlink():
            if SYSTEM_CONF.exists():
                raise ClusterUnavailable(f"{SYSTEM_CONF} is this machine's own SLURM configuration;"
                                         " the private cluster will not replace it")
            return
        target = Path(os.readlink(SYSTEM_CONF))
        folder = target.parent
        if not (target.name == "slurm.conf" and folder.name.startswith(PREFIX)):
            raise ClusterUnavailable(f"{SYSTEM_CONF} links to {target}, not to a private cluster "
                                     "of this script; it will not be replaced")
        if folder.exists():
            stop_cluster(folder)
            shutil.rmtree(folder, ignore_errors=True)
        SYSTEM_CONF.unlink()

    def _link_system_conf(self) -> None:
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(self.conf, SYSTEM_CONF)
        self._linked = True

    def _write_files(self) -> None:
        f = self.folder
        for sub, mode in (("munge", 0o700), ("run", 0o755), ("log", 0o755), ("state", 0o700),
                          ("spool", 0o755)):
            (f / sub).mkdir(mode=mode, exist_ok=True)
            os.chmod(f / sub, mode)
        os.chmod(f, 0o755)
        cpus = os.cpu_count() or 1
        memory = max(memory_mib() - 1024, 1024)
        nodes = "\n".join(
            f"NodeName={name} NodeAddr={address} NodeHostname={self.host} Port={free_port()} "
            f"CPUs={cpus} RealMemory={memory} State=UNKNOWN"
            for name, address in self.nodes.items())
        self.conf.write_text(f"""{MARKER}: a private cluster, removed when it stops
ClusterName=dmaml
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={f}/state
SlurmdSpoolDir={f}/spool/%n
SlurmctldPidFile={f}/run/slurmctld.pid
SlurmdPidFile={f}/run/slurmd-%n.pid
SlurmctldLogFile={f}/log/slurmctld.log
SlurmdLogFile={f}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerParameters=batch_sched_delay=0,sched_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
SlurmdTimeout=10
JobRequeue=0
MailProg=/bin/true
{nodes}
PartitionName=debug Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
""")

    def _run(self, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(["timeout", "-k", "5", str(timeout), *cmd], env=self.env,
                              capture_output=True, text=True)

    def _start_munge(self) -> None:
        f = self.folder
        key = f / "munge" / "munge.key"
        done = self._run("mungekey", "--create", f"--keyfile={key}")
        if done.returncode != 0:
            raise ClusterError(f"mungekey: {done.stderr}")
        os.chmod(key, 0o600)
        done = self._run("munged", f"--socket={self.socket}", f"--key-file={key}",
                         f"--pid-file={f}/run/munged.pid", f"--log-file={f}/log/munged.log",
                         f"--seed-file={f}/munge/munged.seed")
        if done.returncode != 0:
            raise ClusterError(f"munged: {done.stderr}{done.stdout}")

        def answers() -> bool:
            cred = self._run("munge", f"--socket={self.socket}", "-n")
            return cred.returncode == 0 and subprocess.run(
                ["unmunge", f"--socket={self.socket}"], input=cred.stdout, capture_output=True,
                text=True, timeout=10).returncode == 0

        wait_for("munged does not answer", answers, self.start_timeout, f / "log/munged.log")

    def _start_slurm(self) -> None:
        f = self.folder
        done = self._run("slurmctld", "-f", str(self.conf))
        if done.returncode != 0:
            raise ClusterError(f"slurmctld: {done.stderr}{done.stdout}")
        wait_for("slurmctld is not UP", lambda: "UP" in self._run("scontrol", "ping").stdout,
                 self.start_timeout, f / "log/slurmctld.log")
        for node in self.nodes:
            self.start_node(node)
        wait_for(f"the {len(self.nodes)} node(s) are not idle",
                 lambda: self._run("sinfo", "-h", "-N", "-o", "%t").stdout.split()
                 == ["idle"] * len(self.nodes),
                 self.start_timeout, f / f"log/slurmd-{node}.log")

    def start_node(self, node: str) -> None:
        """Start the slurmd of ``node`` (again, after :meth:`kill_node`)."""
        done = subprocess.run(["timeout", "-k", "5", "20", "slurmd", "-f", str(self.conf), "-N",
                               node], env=dict(self.env, **{NODE_ENV: node}),
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"slurmd -N {node}: {done.stderr}{done.stdout}")

    # --- for tests ----------------------------------------------------------------------------
    def kill_node(self, node: str) -> list[int]:
        """Lose ``node`` as a crash would: SIGKILL its slurmd, its slurmstepds (``NODE_ENV`` in
        their environment) and every process of its job steps (``SLURMD_NODENAME``), e.g. the
        Ray processes started there. Returns the pids killed."""
        pids = processes_of(self.conf, {f"{NODE_ENV}={node}", f"SLURMD_NODENAME={node}"})
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def jobs(self) -> list[dict[str, str]]:
        """This cluster's jobs, also those ended in the last MinJobAge seconds: id, state, name
        and comment (as the Snakemake plugin sets them)."""
        done = self._run("squeue", "-h", "-t", "all", "-o", "%i|%T|%j|%k")
        if done.returncode != 0:
            raise ClusterError(f"squeue: {done.stderr}")
        rows = [line.split("|", 3) for line in done.stdout.splitlines() if line.strip()]
        return [dict(zip(("id", "state", "name", "comment"), r)) for r in rows]


def processes_of(conf: Path, marks: set[str] | None = None) -> list[int]:
    """Processes with ``SLURM_CONF=conf`` in their environment (the cluster's daemons and its
    jobs' processes have it) and, if given, one of the ``marks`` (``NAME=value``) too; never
    this process or its parents."""
    ours = f"SLURM_CONF={conf}".encode()
    wanted = {m.encode() for m in marks} if marks else None
    skip, pid = set(), os.getpid()
    while pid > 1:  # this process and its ancestors
        skip.add(pid)
        pid = parent_of(pid)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in skip:
            continue
        try:
            environ = set((proc / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if ours in environ and (wanted is None or wanted & environ):
            found.append(int(proc.name))
    return found


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def stop_cluster(folder: Path, timeout: float = 30) -> None:
    """Cancel the jobs of the cluster in ``folder`` and stop its daemons (by pid file)."""
    conf = folder / "slurm.conf"
    env = dict(os.environ, SLURM_CONF=str(conf))
    if conf.exists() and pid_of(folder, "slurmctld", "run/slurmctld.pid"):
        def queue() -> list[str]:
            done = subprocess.run(["timeout", "-k", "5", "10", "squeue", "-h", "-o", "%i"],
                                  env=env, capture_output=True, text=True)
            return done.stdout.split() if done.returncode == 0 else []

        def empty() -> bool:
            done = subprocess.run(["timeout", "-k", "5", "10", "squeue", "-h", "-t", "active",
                                   "-o", "%i"], env=env, capture_output=True, text=True)
            return done.returncode != 0 or not done.stdout.strip()

        ids = queue()
        if ids:
            subprocess.run(["timeout", "-k", "5", "10", "scancel", *ids], env=env,
                           capture_output=True)
            with contextlib.suppress(ClusterError):
                wait_for("jobs still active", empty, timeout)
    # the slurmds, then slurmctld, then munged
    daemons = [("slurmd", f"run/{p.name}") for p in sorted(folder.glob("run/slurmd-*.pid"))]
    for daemon, pid_file in [*daemons, ("slurmctld", "run/slurmctld.pid"),
                             ("munged", "run/munged.pid")]:
        pid = pid_of(folder, daemon, pid_file)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid) and pid_of(folder, daemon, pid_file) == pid:
            os.kill(pid, signal.SIGKILL)
    # what jobs left behind, e.g. the Ray processes of a node killed by LocalSlurm.kill_node
    for pid in processes_of(conf):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stop", type=Path, metavar="FOLDER",
                        help="stop the leftover cluster of a killed run in FOLDER and remove it")
    parser.add_argument("--nodes", type=int, default=1,
                        help="compute nodes (default 1: this machine on 127.0.0.1)")
    parser.add_argument("command", nargs="*", help="command to run inside the cluster")
    args = parser.parse_args(argv)
    if args.stop:
        if not args.stop.name.startswith(PREFIX):
            parser.error(f"{args.stop} is not a folder of this script ({PREFIX}*)")
        stop_cluster(args.stop)
        if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)).parent == args.stop:
            SYSTEM_CONF.unlink()
        shutil.rmtree(args.stop, ignore_errors=True)
        return 0
    if not args.command:
        parser.error("give a command to run inside the cluster (e.g. -- sinfo)")
    try:
        with LocalSlurm(args.nodes) as cluster:
            print(f"local SLURM cluster in {cluster.folder} (SLURM_CONF={cluster.conf})",
                  file=sys.stderr)
            return subprocess.run(args.command, env=cluster.env).returncode
    except ClusterUnavailable as e:
        print(f"cannot start the local SLURM cluster: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
