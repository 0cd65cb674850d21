"""What made a result: package, git commit and library versions, and the machine it ran on,
recorded in every run folder."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import dmaml
from dmaml.engines import cores


def git_commit() -> str:
    """The commit of the source tree dmaml is imported from (``+dirty`` with local changes)."""
    here = Path(dmaml.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    """Versions of dmaml, its git commit, TensorFlow, numpy and Python, and the host name."""
    import numpy
    import tensorflow

    return {"dmaml": dmaml.__version__, "git": git_commit(), "tensorflow": tensorflow.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(),
            "host": platform.node()}


def processor() -> dict[str, str | int]:
    """The processor (its model name where ``/proc/cpuinfo`` gives one) and the cores this
    process may use; without TensorFlow, so that ``dmaml plan`` can key its measurements by it."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": cores()}


def machine() -> dict[str, str | int]:
    """The processor, the cores this process may use and TensorFlow's intra-op threads (0: its
    own choice), so that a run's wall-clock times can be read."""
    import tensorflow as tf

    return {**processor(), "threads": tf.config.threading.get_intra_op_parallelism_threads()}
