"""The measurement behind ``dmaml bench`` (and ``dmaml plan``): the standard workloads, synthetic
data of their shapes, this machine's matmul peak, and one configuration timed in this process.

A configuration (workload, engine, n, order) makes ``warmup`` runs (compilation), then ``steps``
timed runs of one MAML step each (m = 1), merging the workers' parameters with the mean after
each run as the learner does. Tasks come from synthetic HDF5 files in the real layout (random
images: speed does not depend on what they show). ``dmaml bench`` runs each configuration in a
fresh process (``python -m dmaml.costs.bench_measure --one JSON``,
:mod:`dmaml.costs.fresh_process`), so that peak memory is its own and one measurement cannot warm
or fragment another.

A configuration's record (:func:`measure`): seconds per MAML step of the central model (median,
min, max) as a training run sees them, i.e. including drawing the tasks from the HDF5 file,
converting arrays to tensors and merging; beside it the compiled step alone (the same tasks drawn
and converted beforehand, :func:`step_alone`; not for the processes engine, whose steps run in
other processes); steps per second, achieved GFLOP/s (:mod:`dmaml.costs.flops`) and peak resident
memory; for the processes engine also the per-run overhead (wall time minus the slowest
process's compute time: sending parameters, waking the processes, gathering and merging) and the
peak memory of its worker processes together. Beside the wall times, what the steps would take
on an idle machine (``idle_median_s``, ``idle_first_run_s``: :func:`idle_seconds`, from the CPU
time of the process and its workers and the time their threads waited for a core), the median
share of the idle time in the wall time (``share``: 1 on an idle machine) and the load
(:func:`os.getloadavg`, the highest of its one-minute average before and after), so that a
measurement on a machine shared with other work can be told and corrected.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dmaml.costs import fresh_process
from dmaml.costs.flops import flops_per_step

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
# Square matmuls of the peak measurement (TensorFlow reaches its best from about 4096 on).
PEAK_SIZES = (1024, 2048, 4096)


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


def _waited_s(pids: tuple[int | str, ...]) -> float | None:
    """Seconds the threads of ``pids`` have spent runnable but waiting for a core (the second
    field of Linux's ``/proc/PID/task/TID/schedstat``), summed; None where the kernel does not
    say."""
    total = 0
    try:
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").iterdir():
                try:
                    total += int((task / "schedstat").read_text().split()[1])
                except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
                    continue
    except (OSError, IndexError, ValueError):
        return None
    return total / 1e9


def _cpu_s(pids: tuple[int | str, ...]) -> float:
    """CPU seconds of this process (all its threads, :func:`time.process_time`) and of the other
    ``pids`` (utime + stime from ``/proc/PID/stat``)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        if pid != "self":
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # a process that ended
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def idle_seconds(wall_s: float, cpu_s: float, waited_s: float | None,
                 parallelism: float = 1.0) -> float:
    """What a section that took ``wall_s`` seconds, ``cpu_s`` CPU seconds (all threads) and
    ``waited_s`` seconds of its threads runnable but waiting for a core would take on an idle
    machine: the wall time scaled by the share of the cores it wanted that it got,
    ``wall_s * min(1, (cpu_s / wall_s) / parallelism)``, where the parallelism it would get idle
    is measured, the mean number of its threads that were runnable (running or waiting),
    ``(cpu_s + waited_s) / wall_s``. At least one thread's worth: a section that also blocked
    (reading a file, waiting for another process) keeps its blocked time, ``wall_s - waited_s``.
    Where the waits are unknown (``waited_s`` None), ``parallelism`` is assumed (1 for one
    thread, for which the idle time is the CPU time)."""
    if wall_s <= 0:
        return wall_s
    if waited_s is None:
        return wall_s * min(1.0, cpu_s / wall_s / parallelism)
    runnable = max(1.0, (cpu_s + waited_s) / wall_s)
    return max(wall_s - waited_s / runnable, 0.0)


class Clock:
    """Wall, CPU and waiting-for-a-core seconds of a section of this process (and of ``pids``,
    the worker processes it waits for), and their idle-machine estimate (:func:`idle_seconds`):
    ``with Clock() as c: ...`` then ``c.wall_s``, ``c.idle_s``."""

    def __init__(self, pids: tuple[int, ...] = (), parallelism: float = 1.0):
        self.pids: tuple[int | str, ...] = ("self", *pids)
        self.parallelism = parallelism

    def __enter__(self) -> Clock:
        self._wait, self._cpu = _waited_s(self.pids), _cpu_s(self.pids)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._start
        self.cpu_s = _cpu_s(self.pids) - self._cpu
        wait = _waited_s(self.pids)
        self.waited_s = None if wait is None or self._wait is None else max(wait - self._wait, 0.0)
        self.idle_s = idle_seconds(self.wall_s, self.cpu_s, self.waited_s, self.parallelism)


def load() -> float:
    """This machine's load: runnable processes, averaged over the last minute."""
    return os.getloadavg()[0]


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
    idle, shares, loads = [], [], [load()]
    record = dict(spec, data=None)
    try:
        for i in range(spec["warmup"] + spec["steps"]):
            pids = tuple(p.pid for p in getattr(engine, "procs", ()) if p is not None)
            with Clock(pids) as clock:
                start = time.perf_counter()
                results = engine.run(theta, states, step)
                merged = time.perf_counter()
                theta = merge.merge([r.params for r in results.values()], weights)
                end = time.perf_counter()
            states = {w: r.opt_state for w, r in results.items()}
            step += 1
            if i == 0:
                record["first_run_s"] = end - start
                record["idle_first_run_s"] = clock.idle_s
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
                idle.append(clock.idle_s)
                shares.append(clock.idle_s / clock.wall_s)
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
    loads.append(load())
    record.update(idle_median_s=statistics.median(idle), idle_min_s=min(idle),
                  idle_s=idle, wall_s=seconds, share=statistics.median(shares),
                  load=max(loads), waits_known=_waited_s(("self",)) is not None)
    flops = flops_per_step(cfg) * cfg.workers
    record.update(median_s=median, min_s=min(seconds), max_s=max(seconds), steps_per_s=1 / median,
                  per_worker_s=median / cfg.workers, gflops=flops / median / 1e9,
                  flops_per_step=flops, peak_rss_mib=_memory_mib())
    if "step_seconds" in record:
        record["step_median_s"] = statistics.median(record.pop("step_seconds"))
    if overheads:
        record["overhead_ms"] = 1e3 * statistics.median(overheads)
    return record


def one(spec: dict) -> dict:
    """``--one JSON``'s record: the matmul peak (``spec["peak"]``) or one configuration."""
    return matmul_peak(tuple(spec["sizes"])) if spec.get("peak") else measure(spec)


if __name__ == "__main__":
    fresh_process.answer(one)
