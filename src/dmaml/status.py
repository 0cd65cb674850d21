"""``dmaml status``: where every run of a grid stands, from the run folders alone.

It reads what training writes as it goes (``run.json``, ``config.yaml``, ``metrics.csv``), so it
works while Snakemake or SLURM jobs run, on a laptop or over a cluster's shared filesystem, and
needs no TensorFlow. A run whose ``run.json`` says ``running`` but has not been updated for
:data:`STALE_AFTER` seconds (progress is written at least every 30 s) is shown as ``stalled?``:
its process was probably killed without a chance to say so; the ``holder`` column names the
process that holds (or, killed, last held) the run folder's lock (:mod:`dmaml.run_lock`), so
that one can be found and stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from dmaml.clock import duration
from dmaml.run_folder import STALE_AFTER

COLUMNS = ("run", "status", "step", "val", "s/step", "left", "updated", "holder")


def _last_row(path: Path) -> dict:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    return rows[-1] if rows else {}


def run_status(folder: Path, now: float | None = None) -> dict[str, str]:
    """One run's row: status, step/steps, last validation score, seconds per step, time left
    and when it last wrote progress."""
    now = time.time() if now is None else now
    info = json.loads((folder / "run.json").read_text())
    status = info.get("status", "unknown")
    updated = info.get("updated")
    if status == "running" and updated is not None and now - updated > STALE_AFTER:
        status = "stalled?"
    last = _last_row(folder / "metrics.csv")
    val = (f"acc {float(last['val_acc']):.3f}" if last.get("val_acc") else
           f"mse {float(last['val_loss']):.4f}" if last.get("val_loss") else "")
    speed = info.get("step_s") or info.get("seconds_per_step")  # training alone, as progress
    left = info.get("eta_s") if status == "running" else None
    step = f"{info.get('step', 0)}/{info.get('steps', '?')}"
    return {"run": str(folder), "status": status, "step": step, "val": val,
            "s/step": f"{speed:.3f}" if speed else "",
            "left": duration(left) if left is not None else "",
            "updated": f"{duration(now - updated)} ago" if updated is not None else "",
            "holder": _holder(folder) if status in ("running", "stalled?") else ""}


def _holder(folder: Path) -> str:
    """``host:pid`` of the process that holds the run folder's lock, ``(gone)`` when it is on
    this host and no longer runs; ``none`` when no process holds it."""
    import platform

    from dmaml.run_lock import alive, holder

    info = holder(folder)
    if info is None:
        return "none"
    gone = info["host"] == platform.node() and not alive(info["pid"])
    return f"{info['host']}:{info['pid']}{' (gone)' if gone else ''}"


def collect(roots: list[Path]) -> list[dict[str, str]]:
    """The rows of every run folder (a folder holding run.json) under ``roots``, sorted."""
    folders = sorted({p.parent for root in roots for p in Path(root).rglob("run.json")})
    rows = []
    for folder in folders:
        try:
            row = run_status(folder)
        except (OSError, ValueError):
            row = {"run": str(folder), "status": "unreadable"}  # being replaced, or damaged
        rows.append(row)
    return rows


def table(rows: list[dict[str, str]], base: Path | None = None) -> str:
    """Rows as an aligned text table, run paths relative to ``base``, with a count per status."""
    if base is not None:
        rows = [{**r, "run": str(Path(r["run"]).relative_to(base))
                 if Path(r["run"]).is_relative_to(base) else r["run"]} for r in rows]
    widths = {c: max([len(c), *(len(r.get(c, "")) for r in rows)]) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    lines += ["  ".join(r.get(c, "").ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines.append(f"{len(rows)} run{'s' if len(rows) != 1 else ''}: "
                 + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    roots = args.roots or [Path("results/runs")]
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
        from dmaml.errors import UserError

        raise UserError(f"{', '.join(missing)}: no such folder; give the folder of run folders "
                        "(e.g. results/runs) or of one run (`dmaml train --out`)")
    rows = collect(roots)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows, roots[0] if len(roots) == 1 and roots[0].is_dir() else None))
    return 0


def add_command(sub) -> None:
    """Register ``dmaml status`` on the CLI's subparsers."""
    p = sub.add_parser("status", help="where every run under a folder stands (while they run)",
                       description="A row per run folder under ROOT (default results/runs): "
                                   "status (finished, running, interrupted, diverged, stalled? "
                                   "when a running run stopped writing progress), step/steps, "
                                   "last validation score, seconds per MAML step, time left "
                                   "and when it last wrote progress; for a running or stalled? "
                                   "run, the host:pid holding its folder's lock.")
    p.add_argument("roots", nargs="*", type=Path, metavar="ROOT", help="folders of run folders")
    p.add_argument("--json", action="store_true", help="the rows as JSON")
    p.set_defaults(func=cmd_status)
