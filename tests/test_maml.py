"""The meta-gradient against finite differences (float64), and first order against second order."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from dmaml import maml, models
from dmaml.tasks import SineSampler, sample_batch, task_rng

ALPHA = 0.1


def _f64(params):
    return {k: tf.constant(v, tf.float64) for k, v in params.items()}


def _sine_setup():
    model = models.mlp(hidden=(8, 8))
    params = _f64(model.init(np.random.default_rng(0)))
    tasks = tuple(tf.constant(a, tf.float64 if a.dtype.kind == "f" else a.dtype)
                  for a in sample_batch(SineSampler(5, 5), task_rng(0, 0), 3))
    return model, params, tasks


def _conv_setup():
    model = models.conv4(ways=3, channels=1, image_size=8, filters=3, max_pool=False, blocks=2)
    params = _f64(model.init(np.random.default_rng(1)))
    rng = np.random.default_rng(2)
    tasks = (tf.constant(rng.normal(size=(2, 6, 8, 8, 1))), tf.constant(np.tile([0, 0, 1, 1, 2, 2], (2, 1))),
             tf.constant(rng.normal(size=(2, 6, 8, 8, 1))), tf.constant(np.tile([0, 1, 2, 0, 1, 2], (2, 1))))
    return model, params, tasks


def _meta_loss(model, params, tasks, steps, reduction="mean"):
    losses = [maml.query_loss(model, params, [p[i] for p in tasks], ALPHA, steps)[0]
              for i in range(tasks[0].shape[0])]
    return float(tf.reduce_sum(losses) if reduction == "sum" else tf.reduce_mean(losses))


@pytest.mark.parametrize("setup", [_sine_setup, _conv_setup], ids=["mlp", "conv-bn"])
@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(setup, steps):
    model, params, tasks = setup()
    grads, _, _ = maml.meta_gradient(model, params, tasks, ALPHA, steps)
    rng = np.random.default_rng(3)
    eps = 1e-6
    checked = 0
    for name, value in params.items():
        flat = value.numpy().ravel()
        for i in rng.choice(flat.size, size=min(flat.size, 6), replace=False):
            def shifted(delta, name=name, i=i, flat=flat, shape=value.shape):
                moved = flat.copy()
                moved[i] += delta
                return {**params, name: tf.constant(moved.reshape(shape))}
            numeric = (_meta_loss(model, shifted(eps), tasks, steps)
                       - _meta_loss(model, shifted(-eps), tasks, steps)) / (2 * eps)
            analytic = grads[name].numpy().ravel()[i]
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8), (name, i)
            checked += 1
    assert checked >= 20


def test_sum_reduction_is_tasks_times_mean():
    model, params, tasks = _sine_setup()
    mean, _, _ = maml.meta_gradient(model, params, tasks, ALPHA, 1, reduction="mean")
    total, _, _ = maml.meta_gradient(model, params, tasks, ALPHA, 1, reduction="sum")
    for k in params:
        np.testing.assert_allclose(total[k].numpy(), 3 * mean[k].numpy(), rtol=1e-12)


@pytest.mark.parametrize("setup", [_sine_setup, _conv_setup], ids=["mlp", "conv-bn"])
def test_first_order_differs_by_exactly_the_second_order_term(setup):
    """One inner step: g_2nd - g_1st = -alpha * H_support(theta) g_query(theta')."""
    model, params, tasks = setup()
    second, _, _ = maml.meta_gradient(model, params, tasks, ALPHA, 1)
    first, _, _ = maml.meta_gradient(model, params, tasks, ALPHA, 1, first_order=True)
    count = tasks[0].shape[0]
    term = {k: tf.zeros_like(v) for k, v in params.items()}
    for i in range(count):
        xs, ys, xq, yq = (p[i] for p in tasks)
        adapted = maml.adapt(model, params, xs, ys, ALPHA, 1)
        with tf.GradientTape() as tape:
            tape.watch(list(adapted.values()))
            query = model.loss(model.apply(adapted, xq), yq)
        g_query = tape.gradient(query, adapted)
        with tf.GradientTape() as outer:
            outer.watch(list(params.values()))
            with tf.GradientTape() as inner:
                inner.watch(list(params.values()))
                support = model.loss(model.apply(params, xs), ys)
            g_support = inner.gradient(support, params)
            dot = tf.add_n([tf.reduce_sum(g_support[k] * g_query[k]) for k in params])
        hvp = outer.gradient(dot, params)
        term = {k: term[k] - ALPHA * hvp[k] / count for k in params}
        # first order is the query gradient at the adapted parameters
    for k in params:
        np.testing.assert_allclose(second[k].numpy() - first[k].numpy(), term[k].numpy(),
                                   rtol=1e-7, atol=1e-12)
    size = np.sqrt(sum(float(tf.reduce_sum(t**2)) for t in term.values()))
    assert size > 1e-4, "the second-order term must be non-zero for this check to mean anything"


def test_first_order_gradient_is_query_gradient_at_adapted_parameters():
    model, params, tasks = _sine_setup()
    first, _, _ = maml.meta_gradient(model, params, tasks, ALPHA, 1, first_order=True)
    expected = {k: 0.0 for k in params}
    for i in range(3):
        xs, ys, xq, yq = (p[i] for p in tasks)
        adapted = maml.adapt(model, params, xs, ys, ALPHA, 1)
        with tf.GradientTape() as tape:
            tape.watch(list(adapted.values()))
            loss = model.loss(model.apply(adapted, xq), yq)
        for k, g in tape.gradient(loss, adapted).items():
            expected[k] = expected[k] + g.numpy() / 3
    for k in params:
        np.testing.assert_allclose(first[k].numpy(), expected[k], rtol=1e-10)


def test_batch_norm_uses_the_statistics_of_each_batch():
    model = models.conv4(ways=2, channels=1, image_size=8, filters=2, max_pool=True, blocks=2)
    params = {k: tf.constant(v) for k, v in model.init(np.random.default_rng(0)).items()}
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 1)).astype(np.float32)
    alone = model.apply(params, x[:2]).numpy()
    together = model.apply(params, x).numpy()[:2]
    assert not np.allclose(alone, together), "outputs must depend on the batch's statistics"
