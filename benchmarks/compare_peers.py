"""dmaml's engines beside independent MAML implementations, on the same inputs, in one invocation.

Each implementation makes MAML steps (meta-gradient of t tasks, second or first order, then an
update of theta) on the same tasks as ``dmaml bench`` (the workload's synthetic data, tasks of
``task_rng(seed, TRAIN, 0, step)``) from the same initial parameters, and prints its first
step's meta-loss (the mean query loss at theta_0): equal across implementations, or they do not
compute the same thing. Seconds per MAML step are the median of ``--steps`` steps after one that
compiles, each implementation in a fresh process on tensors made beforehand; dmaml's engines
also through ``Engine.run`` (drawing the tasks itself, as training does). Ratios are to dmaml's
fastest.

Peers: a straightforward TensorFlow per-task loop (nested tapes over dmaml's model functions),
as a graph and under XLA (``jit_compile``); a JAX jit + vmap version of the same conv4; and a
PyTorch per-task loop, the algorithm of learn2learn's ``MAML`` wrapper (learn2learn itself does
not build from PyPI on Python 3.11), each where installed. Install them apart from the project's
environment (``pip install -e ".[peers]"`` into a venv of its own), e.g.::

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install -e ".[peers]"
    /tmp/peers-venv/bin/python benchmarks/compare_peers.py --workloads omniglot-5w1s --steps 10

Never part of the tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from dmaml import config, models, optimizer
from dmaml.costs import bench_measure
from dmaml.engines import create
from dmaml.tasks import INIT, TRAIN, make_sampler, sample_batch, task_rng


def inputs(workload: str, order: str, steps: int, data: dict[str, str]):
    """The run settings, theta_0 and the tasks of ``steps`` MAML steps of one worker."""
    settings = {**bench_measure.WORKLOADS[workload], "first_order": order == "first"}
    if settings["dataset"] != "sine":
        settings["data"] = data[settings["dataset"]]
    cfg = config.load(None, settings)
    sampler = make_sampler(cfg, "train")
    tasks = [sample_batch(sampler, task_rng(cfg.seed, TRAIN, 0, s), cfg.tasks_per_step)
             for s in range(steps)]
    return cfg, models.for_config(cfg).init(task_rng(cfg.seed, INIT)), tasks


def timed(step, state, tasks) -> tuple[float, float, float]:
    """Median seconds of ``step(state, task) -> (state, loss)`` over tasks[1:] after tasks[0]
    (which compiles), the first step's seconds and its loss."""
    start = time.perf_counter()
    state, loss = step(state, tasks[0])
    first, seconds = time.perf_counter() - start, []
    for task in tasks[1:]:
        start = time.perf_counter()
        state, _ = step(state, task)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), first, float(loss)


def dmaml_engine(name: str, run: bool):
    """dmaml's engine ``name``: its ``run`` (``run``) or its compiled step alone."""
    def measure(cfg, theta, tasks):
        import dataclasses

        engine = create(dataclasses.replace(cfg, engine=name), name)
        states = {0: optimizer.init(theta)}
        if run:
            def step(state, task):
                (theta, states), s = state
                result = engine.run(theta, states, s)[0]
                return ((result.params, {0: result.opt_state}), s + 1), result.loss
            return timed(step, ((theta, states), 0), tasks)
        start = time.perf_counter()
        loss = engine.run(theta, states, 0)[0].loss  # compiles
        first = time.perf_counter() - start
        calls = [bench_measure.step_alone(engine, theta, states, s) for s in range(len(tasks))]
        calls[0]()  # a new input shape may compile once more
        seconds = [bench_measure.timed(c) for c in calls[1:]]
        engine.close()
        return statistics.median(seconds), first, loss
    return measure


def tf_loop(jit: bool):
    """A straightforward TensorFlow per-task loop: nested tapes, one task after another."""
    def measure(cfg, theta, tasks):
        model = models.for_config(cfg)

        @tf.function(jit_compile=jit)
        def step(params, xs, ys, xq, yq):
            with tf.GradientTape() as outer:
                outer.watch(params)
                losses = []
                for i in range(cfg.tasks_per_step):
                    p = params
                    for _ in range(cfg.inner_steps):
                        with tf.GradientTape() as inner:
                            inner.watch(p)
                            loss = model.loss(model.apply(p, xs[i]), ys[i])
                        grads = inner.gradient(loss, p)
                        if cfg.first_order:
                            grads = {k: tf.stop_gradient(g) for k, g in grads.items()}
                        p = {k: v - cfg.alpha * grads[k] for k, v in p.items()}
                    losses.append(model.loss(model.apply(p, xq[i]), yq[i]))
                meta = tf.reduce_mean(tf.stack(losses))
            grads = outer.gradient(meta, params)
            return {k: v - cfg.beta * grads[k] for k, v in params.items()}, meta

        ready = [tuple(tf.constant(a) for a in task) for task in tasks]
        return timed(lambda p, task: (lambda r: (r[0], r[1].numpy()))(step(p, *task)),
                     {k: tf.constant(v) for k, v in theta.items()}, ready)
    return measure


def jax_vmap(cfg, theta, tasks):
    """The conv4 MAML step in JAX: jit of the meta-gradient, tasks vmapped."""
    import jax
    import jax.numpy as jnp

    if cfg.dataset == "sine":
        raise NotImplementedError("conv4 workloads only")
    blocks = sum(k.endswith("/w") and k.startswith("conv") for k in theta)
    pool = cfg.dataset == "miniimagenet"

    def apply(p, x):
        h = x
        for i in range(blocks):
            # im2col from strided slices and one matmul: lax.conv under vmap becomes a grouped
            # convolution, and lax's patches function a convolution too, both slow on XLA:CPU
            stride = 1 if pool else 2
            out, lo, hi = models.same_padding(h.shape[1], stride)
            padded = jnp.pad(h, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
            end = stride * (out - 1) + 1
            patches = jnp.concatenate([padded[:, a:a + end:stride, b:b + end:stride]
                                       for a in range(3) for b in range(3)], axis=-1)
            w = p[f"conv{i}/w"]  # HWIO: rows in the patches' (kh, kw, C) order
            h = patches @ w.reshape(-1, w.shape[-1])
            mean = h.mean(axis=(0, 1, 2), keepdims=True)
            var = jnp.square(h - mean).mean(axis=(0, 1, 2), keepdims=True)
            h = (h - mean) * jax.lax.rsqrt(var + models.BN_EPSILON) * p[f"bn{i}/scale"] \
                + p[f"bn{i}/offset"]
            h = jax.nn.relu(h)
            if pool:
                h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                          "VALID")
        return h.reshape(h.shape[0], -1) @ p["dense/w"] + p["dense/b"]

    def loss(p, x, y):
        logits = apply(p, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    def task_loss(p, xs, ys, xq, yq):
        for _ in range(cfg.inner_steps):
            g = jax.grad(loss)(p, xs, ys)
            if cfg.first_order:
                g = jax.lax.stop_gradient(g)
            p = jax.tree_util.tree_map(lambda a, b: a - cfg.alpha * b, p, g)
        return loss(p, xq, yq)

    def meta(p, *task):
        return jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(p, *task))

    @jax.jit
    def step(p, *task):
        value, g = jax.value_and_grad(meta)(p, *task)
        return jax.tree_util.tree_map(lambda a, b: a - cfg.beta * b, p, g), value

    ready = [tuple(jnp.asarray(a) for a in task) for task in tasks]
    return timed(lambda p, task: (lambda r: (r[0], r[1].block_until_ready()))(step(p, *task)),
                 {k: jnp.asarray(v) for k, v in theta.items()}, ready)


def torch_loop(cfg, theta, tasks):
    """A PyTorch per-task loop, what learn2learn's ``MAML.adapt`` does: gradients with
    ``create_graph`` (second order), the same conv4 and dmaml's initial weights."""
    import torch
    import torch.nn.functional as F

    if cfg.dataset == "sine":
        raise NotImplementedError("conv4 workloads only")
    blocks = sum(k.endswith("/w") and k.startswith("conv") for k in theta)
    pool = cfg.dataset == "miniimagenet"

    def layout(k, v):  # convolution kernels HWIO -> OIHW
        return v.transpose(3, 2, 0, 1) if k.startswith("conv") else v

    names = list(theta)
    params = [torch.tensor(np.ascontiguousarray(layout(k, theta[k])), requires_grad=True)
              for k in names]

    def apply(values, x):  # NCHW
        p = dict(zip(names, values))
        h = x
        for i in range(blocks):
            _, lo, hi = models.same_padding(h.shape[-1], 1 if pool else 2)
            h = F.conv2d(F.pad(h, (lo, hi, lo, hi)), p[f"conv{i}/w"], stride=1 if pool else 2)
            mean = h.mean(dim=(0, 2, 3), keepdim=True)
            var = (h - mean).square().mean(dim=(0, 2, 3), keepdim=True)
            h = (h - mean) * torch.rsqrt(var + models.BN_EPSILON)
            h = F.relu(h * p[f"bn{i}/scale"][:, None, None] + p[f"bn{i}/offset"][:, None, None])
            if pool:
                h = F.max_pool2d(h, 2)
        return h.permute(0, 2, 3, 1).reshape(h.shape[0], -1) @ p["dense/w"] + p["dense/b"]

    def tensor(a):  # images NHWC -> NCHW, labels as int64
        if a.dtype.kind == "i":
            return torch.from_numpy(a.astype(np.int64))
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 1, 4, 2, 3)))

    ready = [tuple(tensor(a) for a in task) for task in tasks]

    def step(values, task):
        xs, ys, xq, yq = task
        losses = []
        for i in range(cfg.tasks_per_step):
            p = values
            for _ in range(cfg.inner_steps):
                grads = torch.autograd.grad(F.cross_entropy(apply(p, xs[i]), ys[i]), p,
                                            create_graph=not cfg.first_order)
                p = [v - cfg.alpha * g for v, g in zip(p, grads)]
            losses.append(F.cross_entropy(apply(p, xq[i]), yq[i]))
        meta = torch.stack(losses).mean()
        grads = torch.autograd.grad(meta, values)
        with torch.no_grad():
            new = [(v - cfg.beta * g).requires_grad_() for v, g in zip(values, grads)]
        return new, meta.item()

    return timed(step, params, ready)


PEERS = {"tf loop": (tf_loop(False), "tensorflow"), "tf loop + XLA": (tf_loop(True), "tensorflow"),
         "JAX jit+vmap": (jax_vmap, "jax"), "PyTorch loop": (torch_loop, "torch")}
DMAML = {f"dmaml {e}{' (run)' if run else ''}": dmaml_engine(e, run)
         for e in ("sequential", "vectorized") for run in (False, True)}


IMPLEMENTATIONS = {**DMAML, **{name: fn for name, (fn, _) in PEERS.items()}}


def one(name: str, workload: str, order: str, steps: int, data: dict[str, str]):
    """One implementation on one workload, in this (fresh) process: (s/step, first step s,
    meta-loss), or why not."""
    module = PEERS.get(name, (None, "dmaml"))[1]
    if importlib.util.find_spec(module) is None:
        return f"not installed ({module})"
    try:
        return IMPLEMENTATIONS[name](*inputs(workload, order, steps + 1, data))
    except Exception as e:  # a peer that cannot run this workload
        return f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="omniglot-5w1s",
                   help=f"comma-separated, of {', '.join(w for w in bench_measure.WORKLOADS if w != 'sine')}")
    p.add_argument("--orders", default="second,first", help="second, first or both")
    p.add_argument("--steps", type=int, default=10, help="timed MAML steps [default: 10]")
    p.add_argument("--implementations", default=",".join(IMPLEMENTATIONS),
                   help="comma-separated names of the table's rows [default: all]")
    p.add_argument("--one", help=argparse.SUPPRESS)  # a child process's job, as JSON
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(**json.loads(args.one))))
        return 0
    peak = bench_measure.matmul_peak()
    rows = [f"float32 matmul peak of this invocation: {peak['gflops']:.0f} GFLOP/s "
            f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})", "",
            "| workload | order | implementation | s/step | vs dmaml's best | first step s | "
            "meta-loss |", "|---" * 7 + "|"]
    with tempfile.TemporaryDirectory(prefix="dmaml-peers-") as folder:
        data = bench_measure.make_data(Path(folder))
        for workload in args.workloads.split(","):
            for order in args.orders.split(","):
                results = {}
                for name in args.implementations.split(","):
                    # each in a fresh process: one's idle thread pools cannot slow another
                    job = json.dumps(dict(name=name, workload=workload, order=order,
                                          steps=args.steps, data=data))
                    done = subprocess.run([sys.executable, __file__, "--one", job],
                                          capture_output=True, text=True)
                    lines = [x for x in done.stdout.splitlines() if x.startswith(("[", '"'))]
                    results[name] = json.loads(lines[-1]) if lines else \
                        f"exit code {done.returncode}: {done.stderr[-300:]!r}"
                    print(name, results[name], file=sys.stderr, flush=True)
                best = min((r[0] for n, r in results.items() if n.startswith("dmaml")
                            and not isinstance(r, str)), default=None)
                for name, r in results.items():
                    if isinstance(r, str):
                        rows.append(f"| {workload} | {order} | {name} | - | - | - | {r} |")
                    else:
                        rows.append(f"| {workload} | {order} | {name} | {r[0]:.4f} | "
                                    f"{f'{r[0] / best:.2f}x' if best else '-'} | {r[1]:.1f} | "
                                    f"{r[2]:.4f} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
