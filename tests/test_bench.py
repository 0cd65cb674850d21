"""Tests of dmaml.costs.bench, dmaml.costs.bench_measure and dmaml.costs.flops: the FLOP count
of a MAML step, the matmul peak, the compiled-step figure and the table's peak quote. No timing is
asserted (the machine is shared)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops

from dmaml import config, models
from dmaml.costs import bench, bench_measure, flops

# The ops whose FLOPs the count covers: convolutions and matmuls, forward and both gradients.
PRODUCTS = {"MatMul", "BatchMatMulV2", "Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"}


def needed_ops(graph: tf.Graph) -> list[tf.Operation]:
    """The ops of the graph that its outputs need (an unused op is pruned before it runs)."""
    needed, todo = {}, [t.op for t in graph.outputs]
    while todo:
        op = todo.pop()
        if op.name not in needed:
            needed[op.name] = op
            todo += [t.op for t in op.inputs] + list(op.control_inputs)
    return list(needed.values())


def op_flops(graph: tf.Graph, op: tf.Operation) -> int:
    """2 x the multiply-adds of one product: TensorFlow's own statistics for convolutions and
    matmuls; a convolution's gradient does the forward's multiply-adds (one per output gradient
    element and filter tap), which TensorFlow's estimate (input size / strides) undercounts for
    'same'-padded odd sizes (7 -> 4)."""
    if op.type == "Conv2DBackpropInput":
        return 2 * op.inputs[2].shape.num_elements() * op.inputs[1].shape[:3].num_elements()
    if op.type == "Conv2DBackpropFilter":
        return 2 * op.inputs[2].shape.num_elements() * op.outputs[0].shape[:3].num_elements()
    return ops.get_stats_for_node_def(graph, op.node_def, "flops").value


def graph_flops(graph: tf.Graph) -> int:
    """FLOPs of the convolutions and matmuls that the graph's outputs need."""
    return sum(op_flops(graph, op) for op in needed_ops(graph) if op.type in PRODUCTS)


def straightforward_maml(model: models.Model, alpha: float, steps: int, first_order: bool):
    """An independent MAML meta-gradient: nested tapes, one task after another."""

    @tf.function
    def meta_gradient(params, xs, ys, xq, yq):
        with tf.GradientTape() as outer:
            outer.watch(params)
            total = 0.0
            for i in range(xs.shape[0]):
                p = params
                for _ in range(steps):
                    with tf.GradientTape() as inner:
                        inner.watch(p)
                        loss = model.loss(model.apply(p, xs[i]), ys[i])
                    grads = inner.gradient(loss, p)
                    if first_order:
                        grads = {k: tf.stop_gradient(g) for k, g in grads.items()}
                    p = {k: v - alpha * grads[k] for k, v in p.items()}
                total += model.loss(model.apply(p, xq[i]), yq[i])
        return outer.gradient(total, params)

    return meta_gradient


def step_graph(cfg) -> tf.Graph:
    """The graph of one worker's meta-gradient for ``cfg`` (traced, not run)."""
    model = models.for_config(cfg)
    params = {k: tf.TensorSpec(v.shape, tf.float32)
              for k, v in model.init(np.random.default_rng(0)).items()}
    shape = flops.EXAMPLE_SHAPES[cfg.dataset]
    t, s, q = cfg.tasks_per_step, cfg.ways * cfg.shots, cfg.ways * cfg.queries
    label = (tf.TensorSpec((t, s), tf.int32), tf.TensorSpec((t, q), tf.int32)) \
        if model.classification else (tf.TensorSpec((t, s, 1)), tf.TensorSpec((t, q, 1)))
    fn = straightforward_maml(model, cfg.alpha, cfg.inner_steps, cfg.first_order)
    return fn.get_concrete_function(params, tf.TensorSpec((t, s, *shape)), label[0],
                                    tf.TensorSpec((t, q, *shape)), label[1]).graph


@pytest.mark.parametrize("settings", [
    dict(dataset="sine", shots=5, queries=3, tasks_per_step=2, inner_steps=2),
    dict(dataset="omniglot", ways=3, shots=1, queries=2, tasks_per_step=2, inner_steps=2),
    dict(dataset="miniimagenet", ways=2, shots=1, queries=1, tasks_per_step=1, inner_steps=1),
], ids=["mlp", "conv4-stride2", "conv4-maxpool"])
@pytest.mark.parametrize("order", ["second", "first"])
def test_flops_per_step_is_what_a_maml_step_computes(settings, order):
    cfg = config.load(None, {**settings, "first_order": order == "first"})
    assert flops.flops_per_step(cfg) == pytest.approx(graph_flops(step_graph(cfg)), rel=1e-6)


def test_first_layer_input_gradient_is_not_counted():
    cfg = config.load(None, dict(dataset="omniglot", ways=5, shots=1, queries=1,
                                 tasks_per_step=1, inner_steps=1))
    graph = step_graph(cfg)
    first = flops.layer_flops(models.for_config(cfg), flops.EXAMPLE_SHAPES["omniglot"])[0]
    # Layer 1's input gradient would be a Conv2DBackpropInput of the images' shape: none runs.
    assert first > 0 and not [op for op in needed_ops(graph) if op.type == "Conv2DBackpropInput"
                              and op.outputs[0].shape[1:] == (28, 28, 1)]
    # The old (9kS + 3Q)F counted it, 2% too many on Omniglot 5-way 1-shot.
    old = (9 * 5 + 3 * 5) * models.for_config(cfg).flops
    assert 1.015 < old / flops.flops_per_step(cfg) < 1.03


def test_matmul_peak_reaches_4096_and_is_configurable():
    assert max(bench_measure.PEAK_SIZES) == 4096
    peak = bench_measure.matmul_peak(sizes=(64, 128), repeats=2)
    assert set(peak["by_size"]) == {"64", "128"} and peak["gflops"] > 0
    args = bench_args("--peak-sizes", "256,512")
    assert args.peak_sizes == [256, 512]


def bench_args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_command(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
def test_the_compiled_step_alone_is_reported_beside_the_whole_run(engine):
    spec = dict(workload="sine", order="second", n=2, engine=engine, steps=2, warmup=1,
                budget=0, processes=None, data={})
    record = bench_measure.measure(spec)
    # the whole run (task sampling, conversion, merge) and the compiled step on ready tensors
    assert record["median_s"] > 0 and record["step_median_s"] > 0
    assert "step alone" in bench.table([record], 100.0)


def test_the_table_quotes_the_peak_of_its_own_invocation():
    record = dict(workload="sine", order="second", n=1, engine="sequential", median_s=0.01,
                  min_s=0.01, max_s=0.01, steps_per_s=100, gflops=2.0, peak_rss_mib=300,
                  step_median_s=0.005)
    text = bench.table([record], 123.4, {"4096": 123.4})
    assert "123 GFLOP/s" in text.splitlines()[0] and "| 2 |" in text
