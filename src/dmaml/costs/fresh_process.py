"""One measurement in a fresh Python process, so that its peak memory is its own and one
measurement cannot warm or fragment another: :func:`run` starts ``python -m MODULE --one JSON``
and reads back the record it prints as one JSON line; :func:`answer` is that module's side
(``dmaml bench``: :mod:`dmaml.costs.bench_measure`; ``dmaml plan``: :mod:`dmaml.costs.measured`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable


class Failed(RuntimeError):
    """The process exited with an error or printed no JSON line."""

    def __init__(self, returncode: int, stderr: str):
        super().__init__(f"exit code {returncode}")
        self.returncode, self.stderr = returncode, stderr


def run(module: str, spec: dict, timeout: float | None = None) -> dict:
    """The record ``python -m module --one JSON`` prints for ``spec`` (its last line that is a
    JSON object). Raises :class:`subprocess.TimeoutExpired` past ``timeout`` seconds (None: no
    limit) and :class:`Failed` when the process fails."""
    command = [sys.executable, "-m", module, "--one", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise Failed(done.returncode, done.stderr)
    return json.loads(lines[-1])


def answer(measure: Callable[[dict], dict]) -> None:
    """In the fresh process: ``measure`` the spec of ``--one JSON`` and print its record as one
    JSON line."""
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(measure(json.loads(sys.argv[2]))), flush=True)
