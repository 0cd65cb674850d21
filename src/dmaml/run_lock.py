"""One writer per run folder: an exclusive lock that ``dmaml train`` holds while it writes.

The lock is ``fcntl.flock`` on ``run.lock`` in the run folder, which holds the holder's host,
pid and start time while it is held and is emptied when it is released. The kernel drops the
lock of a process that dies (SIGKILL, a node crash seen by a lock server), so a lock is never
left behind by a dead process; what such a process leaves is its line in ``run.lock``, which the
next writer replaces with a warning. A second writer stops at once with one line naming the
holder and what to do.

Filesystems: local ones (ext4, xfs, btrfs, tmpfs) and NFS (v4, or v3 with the lock daemon;
Linux's client turns ``flock`` into a POSIX lock that the server sees) keep writers on different
hosts apart. On Lustre mounted without ``-o flock``, BeeGFS without global locks, or NFS mounted
``nolock``, the lock reaches only the host that took it: as a second line of defence a writer also
refuses a folder whose ``run.lock`` names a live-looking holder on another host (its ``run.json``
updated within :data:`dmaml.status.STALE_AFTER` seconds).
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
from dmaml.status import STALE_AFTER

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


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
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refusal(Path(folder), holder(folder)) from None
    except OSError:
        return  # a filesystem without locks: the writer's own attempt says so
    finally:
        os.close(fd)


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
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(folder, holder(folder)) from None
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
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released: the file names no holder
    finally:
        os.close(fd)  # drops the lock
