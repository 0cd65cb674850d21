"""Atomic file writes: write under a temporary name in the same folder, then ``os.replace``.

A reader (Snakemake, ``dmaml status``, a resumed run) sees either the old file or the new one,
never half of one, and a writer that fails or is killed leaves no temporary file behind under
the final name. The temporary name is hidden and holds the writer's pid, so two processes writing
the same file never share one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed onto
    ``path``, when it raises it is removed. ``suffix`` ends the temporary name (for writers that
    choose a format by extension, e.g. ``.png``). The folder is made if need be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
