"""Seconds per MAML step of the training core's paths and engines, side by side in one process.

    python benchmarks/speed_paths.py                         # the paper grid's workloads, n = 1
    python benchmarks/speed_paths.py --workloads omniglot-5w5s --paths loop,stacked --steps 5
    python benchmarks/speed_paths.py --paths vectorized,processes --workers 4

A path is one of: ``loop``, the per-task loop of one worker (``maml.make_step``: a
``tf.function`` with native convolutions, the sequential engine's step and the vectorized
engine's fallback), made n times for n workers; ``stacked``, the vectorized engine's XLA step
(``maml.make_stacked_step``, all n workers at once, tasks in parts as the engine takes them); or
an engine by name (``sequential``, ``vectorized``, ``processes``: ``Engine.run`` of n workers for
one MAML step, tasks drawn from a synthetic dataset). The paths take turns step by step after a
warm-up, so that load from other processes hits all alike; the table gives the median seconds
per MAML step of all n workers and each path's speed against the first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dmaml.costs.bench_measure import LOCAL_ENGINES

# The paper grid's settings (config.yaml's defaults per dataset, the tables' ways and shots).
WORKLOADS = {
    "omniglot-5w1s": dict(dataset="omniglot", ways=5, shots=1),
    "omniglot-5w5s": dict(dataset="omniglot", ways=5, shots=5),
    "omniglot-20w1s": dict(dataset="omniglot", ways=20, shots=1),
    "miniimagenet-5w1s": dict(dataset="miniimagenet", ways=5, shots=1),
    "miniimagenet-5w5s": dict(dataset="miniimagenet", ways=5, shots=5),
}
STEPS = ("loop", "stacked")


def make_runner(name: str, cfg, data: dict[str, str]):
    """A function making one MAML step of ``cfg.workers`` workers on path ``name``, and a
    function closing what it holds."""
    import tensorflow as tf

    from dmaml import config, maml, models, optimizer
    from dmaml.engines import create
    from dmaml.engines.vectorized import task_bytes, task_parts
    from dmaml.tasks import INIT, TRAIN, make_sampler, sample_batch, task_rng

    model = models.for_config(cfg)
    theta = model.init(task_rng(cfg.seed, INIT))
    n = cfg.workers
    if name in LOCAL_ENGINES:
        engine = create(config.load(None, {**cfg.to_dict(), "engine": name}))
        states = {w: optimizer.init(theta) for w in range(n)}
        return lambda: engine.run(theta, states, 0), engine.close
    tasks = sample_batch(make_sampler(cfg), task_rng(cfg.seed, TRAIN, 0, 0), cfg.tasks_per_step)
    args = (model, cfg.alpha, cfg.inner_steps, cfg.beta, cfg.first_order, cfg.outer_reduction)
    if name == "loop":
        step, state = maml.make_step(*args), optimizer.init(theta)
        inputs = [tf.constant(a) for a in tasks]
        return lambda: [float(step(theta, state, *inputs)[2]) for _ in range(n)], lambda: None
    parts = task_parts(n, cfg.tasks_per_step, task_bytes(model, cfg))
    step = maml.make_stacked_step(*args, parts=parts)
    params = {k: tf.constant(np.broadcast_to(v, (n, *v.shape))) for k, v in theta.items()}
    state = optimizer.init({k: np.asarray(v) for k, v in params.items()})
    inputs = [tf.constant(np.broadcast_to(a, (n, *a.shape))) for a in tasks]
    return lambda: float(np.sum(step(params, state, *inputs)[2])), lambda: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--paths", default="loop,stacked",
                        help=f"comma-separated, of {', '.join(STEPS + LOCAL_ENGINES)}")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--order", choices=("first", "second"), default="second")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    paths = args.paths.split(",")

    from dmaml import config
    from dmaml.costs.bench_measure import make_data

    print(f"| workload | order | n | {' | '.join(f'{p} s/step (vs {paths[0]})' for p in paths)} |")
    print("|---|---|---|" + "---|" * len(paths))
    with tempfile.TemporaryDirectory(prefix="dmaml-speed-") as folder:
        data = make_data(Path(folder))
        for workload in args.workloads.split(","):
            settings = WORKLOADS[workload]
            cfg = config.load(None, {**settings, "data": data[settings["dataset"]],
                                     "workers": args.workers, "steps_per_run": 1,
                                     "first_order": args.order == "first"})
            runners = [make_runner(name, cfg, data) for name in paths]
            seconds: list[list[float]] = [[] for _ in paths]
            for i in range(args.warmup + args.steps):
                for (run, _), times in zip(runners, seconds):
                    start = time.perf_counter()
                    run()
                    if i >= args.warmup:
                        times.append(time.perf_counter() - start)
            for _, close in runners:
                close()
            medians = [statistics.median(times) for times in seconds]
            cells = [f"{m:.3g} ({medians[0] / m:.2f}x)" for m in medians]
            print(f"| {workload} | {args.order} | {args.workers} | {' | '.join(cells)} |",
                  flush=True)


if __name__ == "__main__":
    main()
