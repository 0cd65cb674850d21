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

Batched forms (``batched=True``, :func:`meta_gradient_stacked`, :func:`make_stacked_step`) compute
the same quantities for many tasks and many workers' parameters at once with the model's
``batched`` function: the n workers' parameters are stacked along a leading worker axis, each
worker's t tasks are an instance axis, and instance i's loss depends on its own parameters only,
so the gradient of the sum of all instances' losses is every instance's own gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from dmaml import optimizer
from dmaml.models import BN_MOMENTUM, Model, Params

ZERO = tf.UnconnectedGradients.ZERO


def adapt(model: Model, params: Params, x, y, alpha, steps: int,
          first_order: bool = False, batched: bool = False) -> Params:
    """``steps`` gradient-descent steps of rate ``alpha`` on (x, y), starting from ``params``.

    ``batched``: params ``[N, ...]`` and data ``[N, B, ...]`` are N independent instances.
    """
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(list(params.values()))
            if batched:
                loss = tf.reduce_sum(model.losses(model.batched(params, x), y))
            else:
                loss = model.loss(model.apply(params, x), y)
        # the model's state (moving statistics) is not adapted, as Keras trains trainable weights
        grads = tape.gradient(loss, {k: p for k, p in params.items() if k not in model.state})
        if first_order:
            grads = {k: tf.stop_gradient(g) for k, g in grads.items()}
        params = {k: p - alpha * grads[k] if k in grads else p for k, p in params.items()}
    return params


def query_loss(model: Model, params: Params, task, alpha, steps: int,
               first_order: bool = False, batched: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Loss and metric on the query set after adapting on the support set.

    ``batched``: one loss and metric per instance (shape ``[N]``), see :func:`adapt`.
    """
    xs, ys, xq, yq = task
    adapted = adapt(model, params, xs, ys, alpha, steps, first_order, batched)
    if batched:
        out = model.batched(adapted, xq)
        return model.losses(out, yq), model.metrics(out, yq)
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
    grads = tape.gradient(total, params, unconnected_gradients=ZERO)  # ZERO: the model's state
    return grads, tf.reduce_mean(losses), tf.reduce_mean(tf.stack([m for _, m in results]))


def moving_statistics(model: Model, params: Params, tasks, alpha, steps: int,
                      stacked: bool = False) -> Params:
    """The model's moving statistics (:attr:`Model.state`) after the training forward passes of
    one MAML step from ``params``, updated as Keras's ``BatchNormalization(momentum=0.99)`` called
    with ``training=True`` updates them, pass after pass: ``s <- 0.99 s + 0.01 * batch statistic``.
    The passes, in order: each task in turn, its support set once per inner step (at the
    parameters of that step), then its query set (at the adapted parameters).

    ``tasks`` are ``(xs, ys, xq)`` with a leading task axis (``[t, ...]``), or with worker and
    task axes (``[n, t, ...]``) when ``stacked``: the state of each worker then has its own
    statistics (``params[k]`` is ``[n, ...]``). Values only: no gradient flows through them.
    """
    params = {k: tf.stop_gradient(p) for k, p in params.items()}
    xs, ys, xq = tasks
    if stacked:  # every (worker, task) an instance of the batched model
        n, t = xs.shape[:2]
        tiled = {k: tf.reshape(tf.broadcast_to(p[:, None], [n, t, *p.shape[1:]]),
                               [n * t, *p.shape[1:]]) for k, p in params.items()}
        passes = _training_passes(model, tiled, *(tf.reshape(a, [n * t, *a.shape[2:]])
                                                  for a in (xs, ys, xq)), alpha, steps, True)
        by_task = [[{k: tf.reshape(stats[k], [n, t, -1])[:, i] for k in model.state}
                    for stats in passes] for i in range(t)]
    else:
        by_task = [_training_passes(model, params, xs[i], ys[i], xq[i], alpha, steps, False)
                   for i in range(xs.shape[0])]
    state = {k: params[k] for k in model.state}
    for passes in by_task:
        for stats in passes:
            for k in state:
                state[k] = state[k] * BN_MOMENTUM + stats[k] * (1 - BN_MOMENTUM)
    return state


def _training_passes(model: Model, params: Params, xs, ys, xq, alpha, steps: int,
                     batched: bool) -> list[Params]:
    """The batch statistics of one task's training forward passes, in order (see
    :func:`moving_statistics`)."""
    seen = []
    for _ in range(steps):
        seen.append(model.norm_stats(params, xs, batched))
        params = adapt(model, params, xs, ys, alpha, 1, first_order=True, batched=batched)
    return [*seen, model.norm_stats(params, xq, batched)]


def make_step(model: Model, alpha: float, inner_steps: int, beta: float,
              first_order: bool = False, reduction: str = "mean") -> Callable:
    """A compiled MAML step: ``(params, opt_state, xs, ys, xq, yq) -> (params, opt_state, loss,
    metric)``, where the task arrays carry a leading task axis (the straightforward per-task loop)."""

    @tf.function
    def step(params, opt_state, xs, ys, xq, yq):
        grads, loss, metric = meta_gradient(model, params, (xs, ys, xq, yq), alpha, inner_steps,
                                            first_order, reduction)
        new, opt_state = optimizer.update(params, grads, opt_state, beta)
        if model.state:  # Adam leaves the state as it was (zero gradients): the passes set it
            new.update(moving_statistics(model, params, (xs, ys, xq), alpha, inner_steps))
        return new, opt_state, loss, metric

    return step


def meta_gradient_stacked(model: Model, params: Params, tasks, alpha, steps: int,
                          first_order: bool = False, reduction: str = "mean"
                          ) -> tuple[Params, tf.Tensor, tf.Tensor]:
    """:func:`meta_gradient` of n workers at once: ``params[k]`` is ``[n, *shape]`` and the task
    arrays are ``[n, t, ...]`` (worker, task). Returns the gradients ``[n, *shape]`` and each
    worker's mean query loss and metric (``[n]``)."""
    n, t = tasks[0].shape[:2]
    flat = [tf.reshape(part, [n * t, *part.shape[2:]]) for part in tasks]
    with tf.GradientTape() as tape:
        tape.watch(list(params.values()))
        # Each worker's parameters, once per task (the gradient of the tiling sums over tasks).
        tiled = {k: tf.reshape(tf.broadcast_to(p[:, None], [n, t, *p.shape[1:]]),
                               [n * t, *p.shape[1:]]) for k, p in params.items()}
        losses, metrics = query_loss(model, tiled, flat, alpha, steps, first_order, batched=True)
        losses, metrics = tf.reshape(losses, [n, t]), tf.reshape(metrics, [n, t])
        per_worker = tf.reduce_sum(losses, 1) if reduction == "sum" else tf.reduce_mean(losses, 1)
        total = tf.reduce_sum(per_worker)  # workers are independent: each gets its own gradient
    grads = tape.gradient(total, params, unconnected_gradients=ZERO)  # ZERO: the model's state
    return grads, tf.reduce_mean(losses, 1), tf.reduce_mean(metrics, 1)


def meta_gradient_in_parts(model: Model, params: Params, tasks, alpha, steps: int,
                           first_order: bool = False, reduction: str = "mean", parts: int = 1
                           ) -> tuple[Params, tf.Tensor, tf.Tensor]:
    """:func:`meta_gradient_stacked`, taking the task axis in ``parts`` equal consecutive parts
    (``parts`` divides t) in a loop and summing their gradients. One part's activations are
    live at a time, so memory is that of t / parts tasks; on a CPU it is also faster, the part's
    activations staying in cache (measured: see the vectorized engine)."""
    if parts == 1:
        return meta_gradient_stacked(model, params, tasks, alpha, steps, first_order, reduction)
    n, t = tasks[0].shape[:2]
    split = [tf.reshape(part, [n, parts, t // parts, *part.shape[2:]]) for part in tasks]

    def body(i, grads, loss, metric):
        g, part_loss, part_metric = meta_gradient_stacked(
            model, params, [part[:, i] for part in split], alpha, steps, first_order, "sum")
        return (i + 1, {k: grads[k] + g[k] for k in grads}, loss + part_loss,
                metric + part_metric)

    zero = tf.zeros([n], next(iter(params.values())).dtype)
    _, grads, loss, metric = tf.while_loop(
        lambda i, *_: i < parts, body,
        (tf.constant(0), {k: tf.zeros_like(p) for k, p in params.items()}, zero, zero))
    if reduction == "mean":
        grads = {k: g / t for k, g in grads.items()}
    return grads, loss / parts, metric / parts


def make_stacked_step(model: Model, alpha: float, inner_steps: int, beta: float,
                      first_order: bool = False, reduction: str = "mean", parts: int = 1,
                      jit_compile: bool = True) -> Callable:
    """:func:`make_step` for n workers at once: ``(params, opt_state, xs, ys, xq, yq) -> (params,
    opt_state, loss, metric)`` with parameters and Adam moments stacked along a leading worker
    axis, task arrays ``[n, t, ...]``, and one step count ``opt_state.t`` shared by the n workers;
    ``loss`` and ``metric`` are ``[n]``. The tasks are taken in ``parts`` parts (see
    :func:`meta_gradient_in_parts`). Compiled with XLA by default (``jit_compile``), which fuses
    the many small element-wise ops of batch norm and the im2col slicing."""

    @tf.function(jit_compile=jit_compile)
    def step(params, opt_state, xs, ys, xq, yq):
        grads, loss, metric = meta_gradient_in_parts(model, params, (xs, ys, xq, yq), alpha,
                                                     inner_steps, first_order, reduction, parts)
        new, opt_state = optimizer.update(params, grads, opt_state, beta)
        if model.state:
            new.update(moving_statistics(model, params, (xs, ys, xq), alpha, inner_steps,
                                         stacked=True))
        return new, opt_state, loss, metric

    return step


def make_batch_evaluator(model: Model, alpha: float, steps: int,
                         jit_compile: bool = True) -> Callable:
    """A compiled ``(params, xs, ys, xq, yq) -> (query losses, query metrics)`` for a batch of
    tasks (arrays ``[T, ...]``) adapted from the same (unstacked) parameters; results ``[T]``.
    For a model whose tasks are better not batched (``Model.batch_tasks``), a loop over them."""
    if not model.batch_tasks:
        one = make_task_evaluator(model, alpha, steps)

        def loop(params, *tasks):
            results = [one(params, *(part[i] for part in tasks)) for i in range(len(tasks[0]))]
            return tuple(tf.stack(r) for r in zip(*results))

        return loop

    @tf.function(jit_compile=jit_compile)
    def evaluate(params, xs, ys, xq, yq):
        count = xs.shape[0]
        tiled = {k: tf.broadcast_to(p, [count, *p.shape]) for k, p in params.items()}
        return query_loss(model, tiled, (xs, ys, xq, yq), alpha, steps, batched=True)

    return evaluate


def make_task_evaluator(model: Model, alpha: float, steps: int) -> Callable:
    """A compiled ``(params, xs, ys, xq, yq) -> (query loss, query metric)`` for one task."""

    @tf.function
    def evaluate(params, xs, ys, xq, yq):
        return query_loss(model, params, (xs, ys, xq, yq), alpha, steps)

    return evaluate
