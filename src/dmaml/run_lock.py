"""One writer per run folder: an exclusive lock that ``dmaml train`` holds while it writes.

The lock is ``fcntl.flock`` on ``run.lock`` in the run folder, which holds the holder's host,
pid and start time while it is held and is emptied when it is released. The kernel drops the
lock of a process that dies (SIGKILL, a node crash seen by a lock server), so a lock is never
left behind by a dead process; what such a process leaves is its line in ``run.lock``, which the
next writer replaces with a warning. A second writer stops at once with one line naming the
holder and what to do, unless that holder is stopping: a process told to stop (SIGTERM, SIGINT)
marks ``run.lock`` so (:func:`mark_stopping`) while it finishes its run and writes its
checkpoint, and a new writer waits up to :data:`STOP_WAIT` seconds for it. That is the path of a
cancelled or pre-empted SLURM job, whose retry may start before the old job has written its
checkpoint.

Filesystems: local ones (ext4, xfs, btrfs, tmpfs) and NFS (v4, or v3 with the lock daemon;
Linux's client turns ``flock`` into a POSIX lock that the server sees) keep writers on different
hosts apart. On Lustre mounted without ``-o flock``, BeeGFS without global locks, or NFS mounted
``nolock``, the lock reaches only the host that took it: as a second line of defence a writer also
refuses a folder whose ``run.lock`` names a live-looking holder on another host (its ``run.json``
updated within :data:`dmaml.run_folder.STALE_AFTER` seconds).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

from dmaml.errors import CheckpointError, UserError
from dmaml.run_folder import STALE_AFTER

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
STOP_WAIT = 300  # seconds a writer waits for a stopping holder: a run of the largest grid cell

_held: dict[Path, int] = {}  # run folder -> descriptor of the lock this process holds on it


class RunLocked(UserError, RuntimeError):
    """Another process writes the run folder."""


def holder(folder: Path) -> dict | None:
    """What ``run.lock`` in ``folder`` says of its holder (``host``, ``pid``, ``since``), or None
    when it names none (never locked, released, or being written)."""
    try:
        info = json.loads((Path(folder) / LOCK_NAME).read_text() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and {"host", "pid", "since"} <= set(info) else None


def describe(info: dict) -> str:
    """``pid 123 on host node7 since 2026-12-06 23:10:02 UTC``."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["since"]))
    return f"pid {info['pid']} on host {info['host']} since {since}"


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _refusal(folder: Path, info: dict | None) -> RunLocked:
    who = describe(info) if info else "another process (it has not written its name yet)"
    return RunLocked(
        f"{folder}: another dmaml train writes this run folder: {who}; wait for it to finish "
        f"(`dmaml status {folder}`), or stop it (kill {info['pid'] if info else 'PID'} on "
        f"{info['host'] if info else 'its host'}: it checkpoints and exits) and run this "
        "command again to resume")


def _fresh_elsewhere(folder: Path, info: dict | None) -> bool:
    """Whether ``info`` names a holder on another host whose run still writes progress (a
    filesystem whose locks do not reach across hosts would let both in)."""
    if not info or info["host"] == platform.node():
        return False
    try:
        run = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return run.get("status") == "running" and time.time() - run.get("updated", 0) < STALE_AFTER


def check(folder: Path) -> None:
    """Raise :class:`RunLocked` if a writer holds ``folder`` now; creates nothing (a quick look
    before the seconds of loading TensorFlow)."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file: no writer yet (or an unreadable folder, reported when writing)
    try:
        _take(fd, Path(folder), fcntl.LOCK_SH)
    except OSError:
        return  # a filesystem without locks: the writer's own attempt says so
    finally:
        os.close(fd)


def _take(fd: int, folder: Path, kind: int) -> None:
    """``flock(fd, kind)`` without blocking; :class:`RunLocked` if another process holds it,
    after waiting up to :data:`STOP_WAIT` seconds while that holder says it is stopping."""
    deadline = time.monotonic() + STOP_WAIT
    waiting = False
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            info = holder(folder)
            if not (info and info.get("stopping")) or time.monotonic() > deadline:
                raise _refusal(folder, info) from None
            if not waiting:
                log.info("%s: waiting for %s, which is stopping (it writes its checkpoint; at "
                         "most %d s)", folder, describe(info), STOP_WAIT)
                waiting = True
            time.sleep(0.2)


def mark_stopping(folder: Path) -> None:
    """Say in ``run.lock`` that this process, its holder, is stopping: the next writer waits for
    it instead of refusing. Does nothing where this process holds no lock on ``folder``."""
    fd = _held.get(Path(folder).resolve())
    info = holder(folder)
    if fd is None or not info:
        return
    # longer than what it overwrites, so a reader never sees a mix of old and new
    os.pwrite(fd, (json.dumps({**info, "stopping": round(time.time())}) + "\n").encode(), 0)


@contextlib.contextmanager
def hold(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock on run folder ``folder`` (created if missing) for the ``with``
    block; :class:`RunLocked` if another process holds it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CheckpointError(f"{folder}: cannot write the run folder ({e.strerror or e}); "
                              "choose a writable --out") from None
    try:
        try:
            _take(fd, folder, fcntl.LOCK_EX)
        except OSError as e:
            raise CheckpointError(
                f"{path}: the filesystem refuses a lock ({e.strerror or e}), so two writers of "
                "this folder could not be kept apart; use a folder on a local disk or on NFS "
                "with locking (docs/running.md, 'One writer per run folder: the lock')") from None
        before = holder(folder)
        if _fresh_elsewhere(folder, before):
            raise RunLocked(
                f"{folder}: {describe(before)} wrote this run folder less than "
                f"{STALE_AFTER / 60:.0f} minutes ago and its host may not share locks with this "
                "one; wait for it to finish, or if that process is gone, delete "
                f"{path} and run this command again")
        if before:
            gone = before["host"] == platform.node() and not alive(before["pid"])
            log.warning("%s: taking over the lock of %s (%s)", folder, describe(before),
                        "no longer running" if gone else "it did not release it: killed, or "
                        "its host went down")
        me = {"host": platform.node(), "pid": os.getpid(), "since": round(time.time())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        _held[folder.resolve()] = fd
        try:
            yield
        finally:
            del _held[folder.resolve()]
            os.ftruncate(fd, 0)  # released: the file names no holder
    finally:
        os.close(fd)  # drops the lock
