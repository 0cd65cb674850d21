"""MAML (Finn et al. 2017): inner adaptation and the meta-gradient, second or first order.

For a task with support set (xs, ys) and query set (xq, yq):

    theta'  = theta - alpha * grad_theta L(xs, ys; theta)          (``steps`` times, chained)
    g_task  = grad_theta L(xq, yq; theta')

The gradient flows through the inner updates (second order, via nested ``tf.GradientTape``s);
``first_order=True`` stops it there (FOMAML), i.e. treats each inner gradient as a constant.
The meta-gradient is the mean (``reduction="mean"``) or the sum (``"sum"``) of ``g_task`` over the
tasks of one MAML step, and one MAML step is one Adam update of theta with it.

Example::

    model = models.mlp()
    step = make_step(model, alpha=0.01, inner_steps=1, beta=0.01)
    params, opt_state, loss, metric = step(params, opt_state, xs, ys, xq, yq)  # [t, ...] tasks
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from dmaml import optimizer
from dmaml.models import Model, Params


def adapt(model: Model, params: Params, x, y, alpha, steps: int,
          first_order: bool = False) -> Params:
    """``steps`` gradient-descent steps of rate ``alpha`` on (x, y), starting from ``params``."""
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(list(params.values()))
            loss = model.loss(model.apply(params, x), y)
        grads = tape.gradient(loss, params)
        if first_order:
            grads = {k: tf.stop_gradient(g) for k, g in grads.items()}
        params = {k: p - alpha * grads[k] for k, p in params.items()}
    return params


def query_loss(model: Model, params: Params, task, alpha, steps: int,
               first_order: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss and metric on the query set after adapting on the support set."""
    xs, ys, xq, yq = task
    adapted = adapt(model, params, xs, ys, alpha, steps, first_order)
    out = model.apply(adapted, xq)
    return model.loss(out, yq), model.metric(out, yq)


def meta_gradient(model: Model, params: Params, tasks, alpha, steps: int,
                  first_order: bool = False, reduction: str = "mean"
                  ) -> tuple[Params, tf.Tensor, tf.Tensor]:
    """Meta-gradient over a batch of tasks (arrays with a leading task axis), looping over tasks.

    Returns the gradient (mean or sum over tasks), and the mean query loss and metric.
    """
    count = tasks[0].shape[0]
    with tf.GradientTape() as tape:
        tape.watch(list(params.values()))
        results = [query_loss(model, params, [part[i] for part in tasks], alpha, steps,
                              first_order) for i in range(count)]
        losses = tf.stack([loss for loss, _ in results])
        total = tf.reduce_sum(losses) if reduction == "sum" else tf.reduce_mean(losses)
    grads = tape.gradient(total, params)
    return grads, tf.reduce_mean(losses), tf.reduce_mean(tf.stack([m for _, m in results]))


def make_step(model: Model, alpha: float, inner_steps: int, beta: float,
              first_order: bool = False, reduction: str = "mean") -> Callable:
    """A compiled MAML step: ``(params, opt_state, xs, ys, xq, yq) -> (params, opt_state, loss,
    metric)``, where the task arrays carry a leading task axis (the straightforward per-task loop)."""

    @tf.function
    def step(params, opt_state, xs, ys, xq, yq):
        grads, loss, metric = meta_gradient(model, params, (xs, ys, xq, yq), alpha, inner_steps,
                                            first_order, reduction)
        params, opt_state = optimizer.update(params, grads, opt_state, beta)
        return params, opt_state, loss, metric

    return step


def make_task_evaluator(model: Model, alpha: float, steps: int) -> Callable:
    """A compiled ``(params, xs, ys, xq, yq) -> (query loss, query metric)`` for one task."""

    @tf.function
    def evaluate(params, xs, ys, xq, yq):
        return query_loss(model, params, (xs, ys, xq, yq), alpha, steps)

    return evaluate
