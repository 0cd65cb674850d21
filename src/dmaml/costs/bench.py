"""``dmaml bench``: how fast each engine makes MAML steps on the standard workloads.

Every selected (workload, engine, n, order) is measured in a fresh process
(:mod:`dmaml.costs.bench_measure`: what is timed and recorded); the sequential engine, a
``tf.function`` looping over tasks in Python, is the straightforward baseline every figure is
compared with, measured in the same invocation; so is this machine's float32 matmul peak, before
and after. Printed: the records as JSON lines (also written to ``--out``: the file ``dmaml plan
--costs`` reads), then a table with the speed-up over the sequential engine and the fraction of
the matmul peak each achieved, then the issue's targets reached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from dmaml.costs import fresh_process
from dmaml.costs.bench_measure import LOCAL_ENGINES, PEAK_SIZES, WORKLOADS, make_data

# the worker counts measured by default per workload (the others: (1, 4, 16))
WORKERS = {"sine": (1, 4, 16, 64)}


def _child(spec: dict, timeout: float) -> dict:
    """Run ``spec`` in a fresh Python process and return its record (a failure's, when it times
    out or fails)."""
    try:
        return fresh_process.run("dmaml.costs.bench_measure", spec, timeout)
    except subprocess.TimeoutExpired:
        return dict(spec, data=None, skipped=f"timed out after {timeout:.0f} s")
    except fresh_process.Failed as e:
        tail = "\n".join(e.stderr.splitlines()[-15:])
        return dict(spec, data=None, error=f"exit code {e.returncode}: {tail}")


def table(records: list[dict], peak: float, by_size: dict[str, float] | None = None) -> str:
    """A Markdown table of the records, with ratios to the sequential engine, under a line
    quoting the matmul peak its % peak column uses (measured in the same invocation)."""
    base = {(r["workload"], r["order"], r["n"]): r["median_s"] for r in records
            if r["engine"] == "sequential" and "median_s" in r}
    sizes = ", ".join(f"N = {k}: {v:.0f}" for k, v in (by_size or {}).items())
    rows = [f"float32 matmul peak of this invocation: {peak:.0f} GFLOP/s"
            + (f" ({sizes})" if sizes else ""), "",
            "| workload | order | n | engine | s/step median (min-max) | step alone | steps/s "
            "| vs loop | GFLOP/s | % peak | peak MiB | notes |", "|---" * 12 + "|"]
    for r in records:
        key = f"| {r['workload']} | {r['order']} | {r['n']} | {r['engine']} |"
        if "median_s" not in r:
            rows.append(f"{key} - | - | - | - | - | - | - | {r.get('skipped') or r.get('error', '')} |")
            continue
        ref = base.get((r["workload"], r["order"], r["n"]))
        speedup = f"{ref / r['median_s']:.2f}x" if ref else "-"
        alone = f"{r['step_median_s']:.4f}" if "step_median_s" in r else "-"
        notes = []
        if "overhead_ms" in r:
            notes.append(f"{r['processes']} procs, overhead {r['overhead_ms']:.1f} ms, workers' "
                         f"memory {r['workers_pss_mib']:.0f} MiB (peak RSS "
                         f"{r['workers_peak_rss_mib']:.0f})")
        rows.append(f"{key} {r['median_s']:.4f} ({r['min_s']:.4f}-{r['max_s']:.4f}) | {alone} | "
                    f"{r['steps_per_s']:.2f} | {speedup} | {r['gflops']:.1f} | "
                    f"{100 * r['gflops'] / peak:.0f} | {r['peak_rss_mib']:.0f} | "
                    f"{'; '.join(notes)} |")
    return "\n".join(rows)


def targets(records: list[dict], peak: float) -> list[str]:
    """The issue's targets, from whichever of their configurations were measured."""
    done = {(r["workload"], r["order"], r["n"], r["engine"]): r for r in records
            if "median_s" in r}

    def get(workload, n, engine, order="second"):
        return done.get((workload, order, n, engine))

    lines = []
    vec, seq = get("omniglot-5w1s", 1, "vectorized"), get("omniglot-5w1s", 1, "sequential")
    if vec and seq:
        lines.append(f"vectorized omniglot-5w1s n=1: {seq['median_s'] / vec['median_s']:.2f}x "
                     "faster than the per-task loop (target >= 3x)")
    big = get("omniglot-5w1s", 16, "vectorized")
    if vec and big:
        lines.append(f"vectorized omniglot-5w1s n=16: per-worker cost "
                     f"{big['per_worker_s'] / vec['per_worker_s']:.2f}x that of n=1 (target "
                     "<= 0.7x)")
    one, many = get("sine", 1, "vectorized"), get("sine", 64, "vectorized")
    if one and many:
        lines.append(f"vectorized sine n=64: a run takes {many['median_s'] / one['median_s']:.1f}x"
                     " the time of n=1 (target < 20x)")
    for workload in ("omniglot-5w1s", "omniglot-20w1s", "miniimagenet-5w1s"):
        r = get(workload, 4, "processes")
        if r:
            lines.append(f"processes {workload} n=4: per-run overhead {r['overhead_ms']:.1f} ms "
                         f"(target < 20 ms), worker processes' memory {r['workers_pss_mib']:.0f}"
                         f" MiB, peak RSS {r['workers_peak_rss_mib']:.0f} MiB (target < 1536)")
    best = max((r for key, r in done.items() if key[0] == "omniglot-5w1s" and key[1] == "second"),
               key=lambda r: r["gflops"], default=None)
    if best:
        lines.append(f"best on omniglot-5w1s: {best['engine']} n={best['n']}, "
                     f"{best['gflops']:.1f} GFLOP/s = {100 * best['gflops'] / peak:.0f}% of the "
                     f"matmul peak {peak:.0f} GFLOP/s (aim >= 30%)")
    return lines


def _parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``dmaml bench``."""
    p = subparsers.add_parser(
        "bench", help="seconds per MAML step of every engine on the standard workloads",
        description="Benchmark the engines on the standard workloads (synthetic data): seconds "
                    "per MAML step, steps/s, GFLOP/s against the matmul peak, peak memory, and "
                    "the sequential engine as the baseline. Prints JSON lines, then a table.")
    p.add_argument("--workloads", type=_parse_list, default=list(WORKLOADS),
                   help=f"comma-separated, of {', '.join(WORKLOADS)} [default: all]")
    p.add_argument("--engines", type=_parse_list, default=list(LOCAL_ENGINES),
                   help=f"comma-separated, of {', '.join(LOCAL_ENGINES)} [default: all]")
    p.add_argument("--workers", type=lambda t: [int(n) for n in _parse_list(t)],
                   help="comma-separated worker counts [default: 1,4,16, and 64 for sine]")
    p.add_argument("--orders", type=_parse_list, default=["second", "first"],
                   help="second, first or both [default: both]")
    p.add_argument("--steps", type=int, default=20, help="timed MAML steps [default: 20]")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first [default: 2]")
    p.add_argument("--processes", type=int,
                   help="worker processes of the processes engine [default: its own choice]")
    p.add_argument("--budget", type=float, default=900,
                   help="seconds a configuration's timed steps may take, estimated after the "
                        "first run; longer ones are reported as skipped (0: no limit) "
                        "[default: 900]")
    p.add_argument("--peak-sizes", type=lambda t: [int(n) for n in _parse_list(t)],
                   default=list(PEAK_SIZES),
                   help="comma-separated sizes of the square matmuls of the peak measurement "
                        f"[default: {','.join(map(str, PEAK_SIZES))}]")
    p.add_argument("--out", type=Path, help="also write the JSON lines to this file")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the selected configurations, each in a fresh process; print JSON lines and a table."""
    unknown = sorted(set(args.workloads) - set(WORKLOADS)) + sorted(set(args.engines) - set(LOCAL_ENGINES))
    if unknown or not set(args.orders) <= {"second", "first"}:
        raise SystemExit(f"dmaml bench: unknown workload, engine or order {unknown or args.orders}")
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 (written as records arrive)

    def emit(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    records = []
    with tempfile.TemporaryDirectory(prefix="dmaml-bench-") as folder:
        data = make_data(Path(folder))
        load = os.getloadavg()[0]
        peak = _child({"peak": True, "sizes": args.peak_sizes}, 600)
        emit(dict(peak, load_before=load, cores=os.cpu_count()))
        for workload in args.workloads:
            for order in args.orders:
                for n in args.workers or WORKERS.get(workload, (1, 4, 16)):
                    for engine in args.engines:
                        spec = dict(workload=workload, order=order, n=n, engine=engine,
                                    steps=args.steps, warmup=args.warmup, budget=args.budget,
                                    processes=args.processes, data=data)
                        record = _child(spec, 4 * 3600)
                        record["load"] = os.getloadavg()[0]
                        emit(record)
                        records.append(record)
        peak_after = _child({"peak": True, "sizes": args.peak_sizes}, 600)
        emit(dict(peak_after, when="after"))
    if out:
        out.close()
    best = max(peak["gflops"], peak_after["gflops"])
    print(f"\nfloat32 matmul peak: {peak['gflops']:.0f} GFLOP/s before, "
          f"{peak_after['gflops']:.0f} after ({os.cpu_count()} cores); % peak uses {best:.0f}\n")
    print(table(records, best, max(peak, peak_after, key=lambda p: p["gflops"])["by_size"]))
    print("\n".join(["", *targets(records, best)]))
    return 0
