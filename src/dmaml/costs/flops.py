"""FLOPs of a MAML step and of an evaluated task, counted from what they compute.

``dmaml bench`` reports GFLOP/s with them; ``dmaml plan`` scales a benchmark's seconds from one
workload to another by them. A layer's FLOPs are :func:`layer_flops`: 2 x multiply-adds of the
convolutions and dense layers per example, TensorFlow's own count of the forward graph; batch
norm, ReLU and pooling are not counted. With F their sum, F1 the first layer's, S support and Q
query examples per task and k inner steps: a layer's forward pass costs F_l, its backward pass
F_l for the weight gradient and F_l for the input gradient except in the first layer (the images
need none), so a forward and backward pass costs 3F - F1. Second order, the outer gradient also
reverses each inner backward pass: 2 x each product of it whose both operands need a gradient,
one gradient where one is the data (layer 1), 6F - 4F1. One task: ``kS (9F - 5F1) + Q (3F - F1)``
second order, ``(kS + Q)(3F - F1)`` first order (checked against TensorFlow's count of a traced
step in tests/test_bench.py).
"""

from __future__ import annotations

import numpy as np

# One example's shape per dataset (the models' inputs).
EXAMPLE_SHAPES = {"sine": (1,), "omniglot": (28, 28, 1), "miniimagenet": (84, 84, 3)}


def layer_flops(model, example_shape: tuple[int, ...]) -> list[int]:
    """FLOPs of each convolution and dense layer of ``model``'s forward pass on one example, in
    order: TensorFlow's own count (2 x multiply-adds) of the traced graph's products."""
    import tensorflow as tf
    from tensorflow.python.framework import ops
    from tensorflow.python.util import deprecation

    params = {k: tf.TensorSpec(v.shape, tf.float32)
              for k, v in model.init(np.random.default_rng(0)).items()}
    graph = tf.function(model.apply).get_concrete_function(
        params, tf.TensorSpec((1, *example_shape), tf.float32)).graph
    with deprecation.silence():  # the counter's TF1 helpers would print a warning to the user
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
