"""``dmaml bench``: how fast each engine makes MAML steps on the standard workloads.

Every (workload, engine, n, order) runs in a fresh process (so peak memory is its own and one
measurement cannot warm or fragment another), makes ``--warmup`` runs (compilation), then
``--steps`` timed runs of one MAML step each (m = 1), merging the workers' parameters with the
mean after each run as the learner does. Tasks come from synthetic HDF5 files in the real layout
(random images: speed does not depend on what they show). The sequential engine, a
``tf.function`` looping over tasks in Python, is the straightforward baseline every figure is
compared with, measured in the same invocation; so is this machine's float32 matmul peak.

Reported per configuration (JSON lines, then a table): seconds per MAML step of the central model
(median, min, max) as a training run sees them, i.e. including drawing the tasks from the HDF5
file, converting arrays to tensors and merging; beside it the compiled step alone (the same
tasks drawn and converted beforehand, :func:`step_alone`; not for the processes engine, whose
steps run in other processes); steps per second, the speed-up over the sequential engine, achieved GFLOP/s
and its fraction of the matmul peak, and peak resident memory; for the processes engine also the
per-run overhead (wall time minus the slowest process's compute time: sending parameters, waking
the processes, gathering and merging) and the peak memory of its worker processes together.

FLOPs are counted from what a MAML step computes (:func:`layer_flops`: 2 x multiply-adds of the
convolutions and dense layers per example, TensorFlow's own count of the forward graph; batch
norm, ReLU and pooling are not counted). With F their sum, F1 the first layer's, S support and Q
query examples per task and k inner steps: a layer's forward pass costs F_l, its backward pass
F_l for the weight gradient and F_l for the input gradient except in the first layer (the images
need none), so a forward and backward pass costs 3F - F1. Second order, the outer gradient also
reverses each inner backward pass: 2 x each product of it whose both operands need a gradient,
one gradient where one is the data (layer 1), 6F - 4F1. One task: ``kS (9F - 5F1) + Q (3F - F1)``
second order, ``(kS + Q)(3F - F1)`` first order (checked against TensorFlow's count of a traced
step in tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# The standard workloads, named after the paper's experiments (dataset, N-way k-shot).
WORKLOADS: dict[str, dict] = {
    "sine": dict(dataset="sine", shots=10, queries=10, tasks_per_step=10, inner_steps=1),
    "omniglot-5w1s": dict(dataset="omniglot", ways=5, shots=1, queries=1, tasks_per_step=32,
                          inner_steps=1),
    "omniglot-20w1s": dict(dataset="omniglot", ways=20, shots=1, queries=1, tasks_per_step=16,
                           inner_steps=5, alpha=0.1),
    "miniimagenet-5w1s": dict(dataset="miniimagenet", ways=5, shots=1, queries=15,
                              tasks_per_step=4, inner_steps=5),
}
# the engines that run on one machine, which `dmaml bench` compares (config.ENGINE_CHOICES: the
# values of the `engine` setting)
LOCAL_ENGINES = ("sequential", "vectorized", "processes")
WORKERS = {"sine": (1, 4, 16, 64)}  # the others: (1, 4, 16)
# Square matmuls of the peak measurement (TensorFlow reaches its best from about 4096 on).
PEAK_SIZES = (1024, 2048, 4096)
# One example's shape per dataset (the models' inputs).
EXAMPLE_SHAPES = {"sine": (1,), "omniglot": (28, 28, 1), "miniimagenet": (84, 84, 3)}


def layer_flops(model, example_shape: tuple[int, ...]) -> list[int]:
    """FLOPs of each convolution and dense layer of ``model``'s forward pass on one example, in
    order: TensorFlow's own count (2 x multiply-adds) of the traced graph's products."""
    import tensorflow as tf
    from tensorflow.python.framework import ops

    params = {k: tf.TensorSpec(v.shape, tf.float32)
              for k, v in model.init(np.random.default_rng(0)).items()}
    graph = tf.function(model.apply).get_concrete_function(
        params, tf.TensorSpec((1, *example_shape), tf.float32)).graph
    return [ops.get_stats_for_node_def(graph, op.node_def, "flops").value
            for op in graph.get_operations() if op.type in ("Conv2D", "MatMul")]


def _flops(cfg) -> tuple[float, float]:
    """F and F1 of ``cfg``'s model (see the module docstring)."""
    from dmaml import models

    layers = layer_flops(models.for_config(cfg), EXAMPLE_SHAPES[cfg.dataset])
    return float(sum(layers)), float(layers[0])


def flops_per_step(cfg) -> float:
    """FLOPs of one MAML step of one worker (see the module docstring)."""
    f, f1 = _flops(cfg)
    support, query = cfg.inner_steps * cfg.ways * cfg.shots, cfg.ways * cfg.queries
    inner = support * (3 * f - f1 if cfg.first_order else 9 * f - 5 * f1)
    return cfg.tasks_per_step * (inner + query * (3 * f - f1))


def eval_flops(cfg) -> float:
    """FLOPs of evaluating one task: ``eval_inner_steps`` gradient steps on the support set
    (nothing differentiated through them) and a forward pass of the query set."""
    f, f1 = _flops(cfg)
    return cfg.eval_inner_steps * cfg.ways * cfg.shots * (3 * f - f1) + cfg.ways * cfg.queries * f


def make_data(folder: Path) -> dict[str, str]:
    """Synthetic dataset files: Omniglot-shaped (28x28x1) and miniImageNet-shaped (84x84x3)."""
    from dmaml.data.store import atomic_h5, write_split

    rng = np.random.default_rng(0)
    files = {}
    for dataset, size, channels, classes in (("omniglot", 28, 1, 100),
                                             ("miniimagenet", 84, 3, 20)):
        path = folder / f"{dataset}.h5"
        per_class = 20
        with atomic_h5(path) as f:
            f.attrs["dataset"] = f"synthetic {dataset} (random images)"
            for split in ("train", "val", "test"):
                images = rng.integers(0, 256, (classes * per_class, size, size, channels),
                                      dtype=np.uint8)
                write_split(f, split, images, np.arange(classes + 1) * per_class,
                            [f"{split}/class{c:03d}" for c in range(classes)])
        files[dataset] = str(path)
    return files


def _memory_mib(pid: int | str = "self", field: str = "VmHWM", name: str = "status") -> float:
    """A memory figure of a process from /proc, MiB: peak resident memory (``VmHWM``) by
    default; ``field="Pss", name="smaps_rollup"`` gives its proportional share (shared pages
    split between the processes that map them, so the figures of several processes add up)."""
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def matmul_peak(sizes: tuple[int, ...] = PEAK_SIZES, repeats: int = 10) -> dict:
    """This machine's float32 matmul throughput: the best GFLOP/s of ``repeats`` square matmuls
    of each size, with TensorFlow's default threads (all cores). The compiled call returns one
    element of the product, so that waiting for it copies 4 bytes, not the matrix."""
    import tensorflow as tf

    f = tf.function(lambda a, b: tf.linalg.matmul(a, b)[-1, -1])
    best = {}
    for size in sizes:
        a, b = tf.random.normal((size, size)), tf.random.normal((size, size))
        float(f(a, b))
        seconds = min(timed(lambda a=a, b=b: float(f(a, b))) for _ in range(repeats))
        best[size] = 2 * size**3 / seconds / 1e9
    return {"kind": "matmul_peak", "gflops": max(best.values()),
            "by_size": {str(k): round(v, 1) for k, v in best.items()}}


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn`` (its result is dropped)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_alone(engine, theta: dict, states: dict, step: int):
    """A callable making the engine's compiled MAML step of every worker once, on inputs made
    beforehand (tasks drawn, everything converted to tensors), and waiting for its losses: the
    compiled step without task sampling, conversion and merging. None for engines that compute
    in other processes."""
    import tensorflow as tf

    from dmaml.engines.sequential import SequentialEngine
    from dmaml.engines.vectorized import VectorizedEngine
    from dmaml.optimizer import AdamState
    from dmaml.tasks import TRAIN, sample_batch, task_rng

    engine = getattr(engine, "per_task", None) or engine
    cfg, const = engine.cfg, functools.partial(tf.nest.map_structure, tf.constant)
    if isinstance(engine, VectorizedEngine):
        calls = []
        for workers in engine.chunks(states):
            params, state = engine._stack(theta, [states[w] for w in workers])
            calls.append((engine.step_fn(len(workers)), params, state,
                          const(engine._tasks(workers, step))))
    elif isinstance(engine, SequentialEngine):
        calls = [(engine.step_fn, const(theta), AdamState(*const(tuple(states[w]))),
                  const(sample_batch(engine.sampler, task_rng(cfg.seed, TRAIN, w, step),
                                     cfg.tasks_per_step)))
                 for w in states]
    else:
        return None

    def run() -> None:
        for fn, params, state, tasks in calls:
            fn(params, state, *tasks)[2].numpy()

    return run


def measure(spec: dict) -> dict:
    """One configuration, in this process (see the module docstring): a standard workload by
    name, or ``spec["settings"]`` (run settings) instead."""
    from dmaml import config, merge, models, optimizer
    from dmaml.engines import create
    from dmaml.tasks import INIT, task_rng

    settings = {**(spec.get("settings") or WORKLOADS[spec["workload"]]), "workers": spec["n"],
                "steps_per_run": 1,
                "first_order": spec["order"] == "first", "engine": spec["engine"],
                "steps": spec["warmup"] + spec["steps"], "eval_every": 1}
    if settings["dataset"] != "sine":
        settings["data"] = spec["data"][settings["dataset"]]
    cfg = config.load(None, settings)
    if spec["engine"] == "processes" and spec.get("processes"):
        from dmaml.engines.processes import ProcessesEngine

        engine = ProcessesEngine(cfg, processes=spec["processes"])
    else:
        engine = create(cfg)
    theta = models.for_config(cfg).init(task_rng(cfg.seed, INIT))
    states = {w: optimizer.init(theta) for w in range(cfg.workers)}
    weights = merge.weights("mean", [0.0] * cfg.workers)
    seconds, overheads, step = [], [], 0
    record = dict(spec, data=None)
    try:
        for i in range(spec["warmup"] + spec["steps"]):
            start = time.perf_counter()
            results = engine.run(theta, states, step)
            merged = time.perf_counter()
            theta = merge.merge([r.params for r in results.values()], weights)
            end = time.perf_counter()
            states = {w: r.opt_state for w, r in results.items()}
            step += 1
            if i == 0:
                record["first_run_s"] = end - start
                if spec["budget"] and spec["warmup"] + spec["steps"] > 1:
                    probe = time.perf_counter()
                    engine.run(theta, states, step)
                    estimate = (time.perf_counter() - probe) * spec["steps"]
                    if estimate > spec["budget"]:
                        record["skipped"] = (f"{spec['steps']} steps would take about "
                                             f"{estimate / 60:.0f} min (budget "
                                             f"{spec['budget'] / 60:.0f} min)")
                        return record
            if i >= spec["warmup"]:
                seconds.append(end - start)
                if spec["engine"] == "processes":
                    overheads.append(merged - start - max(engine.last_compute) + end - merged)
        if spec["engine"] == "processes":
            record["workers_peak_rss_mib"] = sum(_memory_mib(p.pid) for p in engine.procs)
            record["workers_pss_mib"] = sum(_memory_mib(p.pid, "Pss", "smaps_rollup")
                                            for p in engine.procs)
            record["processes"] = engine.count
        alone = step_alone(engine, theta, states, step)
        if alone:
            alone()  # a new input shape may compile once more
            record["step_seconds"] = [timed(alone) for _ in range(min(spec["steps"], 5))]
    finally:
        engine.close()
    median = statistics.median(seconds)
    flops = flops_per_step(cfg) * cfg.workers
    record.update(median_s=median, min_s=min(seconds), max_s=max(seconds), steps_per_s=1 / median,
                  per_worker_s=median / cfg.workers, gflops=flops / median / 1e9,
                  flops_per_step=flops, peak_rss_mib=_memory_mib())
    if "step_seconds" in record:
        record["step_median_s"] = statistics.median(record.pop("step_seconds"))
    if overheads:
        record["overhead_ms"] = 1e3 * statistics.median(overheads)
    return record


def _child(spec: dict, timeout: float) -> dict:
    """Run ``spec`` in a fresh Python process and return its record."""
    command = [sys.executable, "-m", "dmaml.bench", "--one", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(spec, data=None, skipped=f"timed out after {timeout:.0f} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        return dict(spec, data=None, error=f"exit code {done.returncode}: {tail}")
    return json.loads(lines[-1])


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


def _main_one(spec: dict) -> None:
    logging.basicConfig(level=logging.WARNING)
    record = matmul_peak(tuple(spec["sizes"])) if spec.get("peak") else measure(spec)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    _main_one(json.loads(sys.argv[2]))
