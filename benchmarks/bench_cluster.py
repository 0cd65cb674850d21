"""Per-run overhead of the cluster engine (Ray actors) next to the processes engine, and the
memory of Ray's processes, on this machine (benchmarks/README.md, "Cluster engine").

    python benchmarks/bench_cluster.py                 # n = 2, 4, 8; about 3 minutes on 2 cores

Both engines get the same work: the Omniglot 5-way 1-shot model (112,773 parameters), one task per
MAML step (so that the computation is small next to what a run costs around it), m = 1, and the
mean merge after each run, as the learner does it. Both run the workers in 2 processes (the
cores): ``processes=2`` and ``actors=2``. A run's overhead is its wall time minus the slowest
process's compute time: sending the parameters and Adam states, waking the processes, gathering
the results. Memory is the proportional set size (PSS; shared pages split between the processes
that map them) of Ray's daemons (GCS, raylet, agents, log monitor), of its idle worker processes,
and of the actors, with the engine of the largest n running.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from dmaml import config, merge, models, optimizer
from dmaml.data.store import atomic_h5, write_split
from dmaml.engines.cluster import ClusterEngine, init_ray, shutdown_ray
from dmaml.engines.processes import ProcessesEngine
from dmaml.tasks import INIT, task_rng

MIB = 2**20


def make_data(path: Path) -> Path:
    """An Omniglot-shaped file of random images (speed does not depend on what they show)."""
    rng = np.random.default_rng(0)
    classes, per_class = 20, 4
    with atomic_h5(path) as f:
        f.attrs["dataset"] = "synthetic"
        for split in ("train", "val", "test"):
            images = rng.integers(0, 256, (classes * per_class, 28, 28, 1), dtype=np.uint8)
            write_split(f, split, images, np.arange(classes + 1) * per_class,
                        [f"{split}/class{c:03d}" for c in range(classes)])
    return path


def measure(engine, cfg: config.RunConfig, runs: int, warmup: int) -> dict[str, float]:
    """Seconds of the first run (processes starting, compilation); median wall and overhead
    milliseconds of a run, over ``runs`` after ``warmup``."""
    theta = models.for_config(cfg).init(task_rng(cfg.seed, INIT))
    states = {w: optimizer.init(theta) for w in range(cfg.workers)}
    walls, overheads = [], []
    for step in range(warmup + runs):
        start = time.perf_counter()
        results = engine.run(theta, states, step)
        theta = merge.merge([r.params for r in results.values()],
                            merge.weights("mean", [r.loss for r in results.values()]))
        wall = time.perf_counter() - start
        states = {w: r.opt_state for w, r in results.items()}
        if step == 0:
            first = wall
        if step >= warmup:
            walls.append(wall)
            overheads.append(wall - max(engine.last_compute))
    return {"first_s": first, "wall_ms": 1e3 * statistics.median(walls),
            "overhead_ms": 1e3 * statistics.median(overheads)}


def memory() -> dict[str, str]:
    """PSS of this process's descendants by kind: Ray's daemons, its idle workers, the cluster
    engine's actors, the processes engine's processes."""
    kinds = {"Ray daemons": [], "Ray idle workers": [], "actors": [], "worker processes": []}
    for proc in psutil.Process().children(recursive=True):
        try:
            name = " ".join(proc.cmdline()) or proc.name()
            pss = proc.memory_full_info().pss / MIB
        except psutil.Error:
            continue
        kind = ("actors" if "WorkerActor" in name else
                "Ray idle workers" if name.startswith("ray::IDLE") else
                "worker processes" if "multiprocessing" in name else "Ray daemons")
        kinds[kind].append(pss)
    return {kind: f"{len(p)} processes, {sum(p):.0f} MiB" for kind, p in kinds.items() if p}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs (compilation)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        data = make_data(Path(folder) / "omniglot.h5")
        start = time.perf_counter()
        temp_dir = init_ray(2)
        print(f"ray.init (local instance, 2 CPUs): {time.perf_counter() - start:.1f} s")
        print(f"Ray with no actors: {memory()}")
        rows, used = [], {}
        try:
            for n in args.workers:
                cfg = config.load(None, {"dataset": "omniglot", "data": str(data), "ways": 5,
                                         "shots": 1, "queries": 1, "tasks_per_step": 1,
                                         "workers": n, "steps": 1000, "eval_every": 100})
                for name, kind, option in (("processes", ProcessesEngine, {"processes": 2}),
                                           ("cluster", ClusterEngine, {"actors": 2})):
                    start = time.perf_counter()
                    engine = kind(cfg, **option)
                    made = time.perf_counter() - start
                    try:
                        result = measure(engine, cfg, args.runs, args.warmup)
                        if n == max(args.workers):
                            used[name] = memory()
                    finally:
                        engine.close()
                    rows.append({"engine": name, "n": n, "start_s": made + result["first_s"],
                                 **result})
                    print(f"{name:10s} n={n}: to the first result {rows[-1]['start_s']:5.1f} s | "
                          f"run {result['wall_ms']:6.1f} ms | overhead "
                          f"{result['overhead_ms']:6.1f} ms", flush=True)
        finally:
            shutdown_ray(temp_dir)
    for name, kinds in used.items():
        print(f"\nPSS with the {name} engine at n = {max(args.workers)}: {kinds}")
    print("\n| engine (2 processes) | n | s to the first result | ms per run | overhead ms per run |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['n']} | {r['start_s']:.1f} | {r['wall_ms']:.1f} | "
              f"{r['overhead_ms']:.1f} |")


if __name__ == "__main__":
    main()
