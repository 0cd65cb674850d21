"""Where the time of one MAML step goes: the vectorized engine's compiled step, by kind of operation.

    python benchmarks/profile_step.py                  # omniglot-5w1s, n = 1, all cores; ~1 min
    python benchmarks/profile_step.py --threads 1 --workers 4
    python benchmarks/profile_step.py --engine sequential --ways 5 --shots 5   # the per-task loop

Runs a standard workload of ``dmaml bench`` (synthetic data; ``--ways``/``--shots`` change it)
with the vectorized engine (or ``--engine``), then three MAML steps under TensorFlow's profiler,
and prints the operations' time per step summed over the threads that run them (the intra-op
threads; for the per-task loop's native kernels, the inter-op threads), by kind: matrix products
(``MatMul``: the convolutions' im2col products, the dense layer and their gradients) and XLA's
fusions of the element-wise work around them (batch norm, the im2col slicing and its gradient,
Adam), or the loop's native convolutions and element-wise kernels, with the wall time per step
and how many cores the step keeps busy beside it. With ``--threads 1`` the sum is the wall
time's breakdown.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="omniglot-5w1s")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    parser.add_argument("--top", type=int, default=12, help="kinds to list [default: 12]")
    parser.add_argument("--engine", default="vectorized", choices=("vectorized", "sequential"))
    parser.add_argument("--ways", type=int, help="the workload's ways, changed")
    parser.add_argument("--shots", type=int, help="the workload's shots, changed")
    args = parser.parse_args()

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from dmaml import config, models, optimizer
    from dmaml.costs.bench_measure import WORKLOADS, make_data
    from dmaml.engines import create, set_threads
    from dmaml.tasks import INIT, task_rng

    if args.threads:
        set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dmaml-profile-") as folder:
        changed = {k: v for k, v in (("ways", args.ways), ("shots", args.shots)) if v}
        settings = {**WORKLOADS[args.workload], **changed, "workers": args.workers,
                    "engine": args.engine, "steps_per_run": 1, "steps": 100}
        if settings["dataset"] != "sine":
            settings["data"] = make_data(Path(folder))[settings["dataset"]]
        cfg = config.load(None, settings)
        engine = create(cfg)
        theta = models.for_config(cfg).init(task_rng(cfg.seed, INIT))
        states = {w: optimizer.init(theta) for w in range(cfg.workers)}
        for step in range(2):  # compile and warm up
            engine.run(theta, states, step)
        before = os.times()
        start = time.perf_counter()
        for step in range(5):  # cores kept busy, without the profiler's own cost
            engine.run(theta, states, step)
        busy = (sum(os.times()[:2]) - sum(before[:2])) / (time.perf_counter() - start)
        walls = []
        tf.profiler.experimental.start(folder + "/trace")
        for step in range(3):
            start = time.perf_counter()
            engine.run(theta, states, step)
            walls.append(time.perf_counter() - start)
        tf.profiler.experimental.stop()
        engine.close()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(folder).glob("trace/**/*.xplane.pb")).read_bytes())

    # XLA's operations run on the intra-op threads; native kernels on the inter-op threads,
    # whose lines under XLA hold one span for the whole compiled call.
    threads = "Eigen" if args.engine == "vectorized" else "tf_Compute"
    kinds: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if threads not in line.name:
                continue  # not a thread where the operations run
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if name.startswith(("ThunkExecutor", "end:", "Threadpool", "Slinky",
                                    "ExecutorState")):
                    continue  # bookkeeping spans around the operations
                # MatMul_1.58 -> MatMul; gradient_tape/Conv2D_12:_MklNativeConv2D -> the op type
                kind = re.sub(r"([._]\d+)+$", "", name.rsplit(":", 1)[-1])
                kinds[kind] += event.duration_ps / 1e9 / len(walls)
    total = sum(kinds.values())
    label = args.workload + "".join(f", {k} {v}" for k, v in changed.items())
    print(f"{label}, {args.engine}, n = {args.workers}: wall {1e3 * statistics.median(walls):.1f} ms "
          f"per MAML step (profiled); {busy:.2f} cores busy (CPU time / wall time, unprofiled); "
          f"operations {total:.1f} ms summed over threads")
    for kind, ms in kinds.most_common(args.top):
        print(f"{ms:9.1f} ms  {100 * ms / total:5.1f}%  {kind}")


if __name__ == "__main__":
    main()
