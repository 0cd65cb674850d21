"""Atomic save and load of training state as ``.npz`` files of named arrays.

A checkpoint is written to a temporary name in the same folder, flushed to disk and renamed over
the old one, so a job killed at any moment leaves either the previous or the new checkpoint, never
a half-written one. A checkpoint saved with ``previous`` keeps the one it replaces under that
name, so a file damaged after it was written (a failing disk, a truncated copy) costs one
checkpoint period, not the run.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from dmaml import atomic
from dmaml.errors import CheckpointError, DamagedCheckpoint

DAMAGED = "damaged checkpoint (not a readable .npz file)"


def save(path: Path, arrays: dict[str, np.ndarray], previous: Path | None = None) -> None:
    """Write ``arrays`` to ``path`` atomically; with ``previous``, the file it replaces is kept
    under that name."""
    try:
        with atomic.replacing(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            if previous is not None and path.exists():
                os.replace(path, previous)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write checkpoint ({e.strerror or e}); free disk "
                              "space or choose another --out folder, then rerun to resume") from None


def load(path: Path, fix: str = "replace it with an intact copy") -> dict[str, np.ndarray]:
    """Read every array of the checkpoint ``path``; a damaged one is a
    :class:`~dmaml.errors.DamagedCheckpoint` that says what to do: ``fix``."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except OSError as e:
        if e.strerror:  # not the file's contents: permissions, a folder, ...
            raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror}); make it a "
                                  "readable file") from None
        raise DamagedCheckpoint(path, DAMAGED, fix) from None
    except (ValueError, EOFError, KeyError, zipfile.BadZipFile):  # numpy's words would mislead
        raise DamagedCheckpoint(path, DAMAGED, fix) from None


def pack(prefix: str, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Prefix the names of a parameter dict, e.g. ``theta/conv0/w``."""
    return {f"{prefix}/{k}": np.asarray(v) for k, v in params.items()}


def unpack(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The parameter dict saved under ``prefix`` by :func:`pack`."""
    start = f"{prefix}/"
    return {k[len(start):]: v for k, v in arrays.items() if k.startswith(start)}
