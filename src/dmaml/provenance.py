"""What made a result: package, git commit and library versions, recorded in every run folder."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import dmaml


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
