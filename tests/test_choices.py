"""The implementation choices the paper leaves open (docs/design.md): batch norm's statistics
against Keras's own layer, the spatial-mean features, and a new Adam each run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from dmaml import config, maml, merge, models, optimizer
from dmaml.engines.sequential import SequentialEngine
from dmaml.errors import ConfigError
from dmaml.learner import Learner
from dmaml.tasks import INIT, task_rng

ALPHA = 0.1
FILTERS, SIZE, WAYS = 3, 8, 2


def small(norm: str, features: str = "flatten") -> models.Model:
    """One block of conv4: conv, batch norm, ReLU, then the dense layer."""
    return models.conv4(WAYS, channels=1, image_size=SIZE, filters=FILTERS, max_pool=False,
                        blocks=1, norm=norm, features=features)


def params_of(model: models.Model, seed: int = 0) -> dict:
    params = model.init(np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)  # scales and offsets away from 1 and 0
    params["bn0/scale"] = rng.uniform(0.5, 1.5, FILTERS).astype(np.float32)
    params["bn0/offset"] = rng.normal(0, 0.3, FILTERS).astype(np.float32)
    return {k: tf.constant(v) for k, v in params.items()}


def keras_twin(params: dict, features: str = "flatten") -> tf.keras.Sequential:
    """The same network in Keras layers, its weights set from ``params`` (Keras's default
    momentum 0.99 and our epsilon)."""
    net = tf.keras.Sequential([
        tf.keras.Input((SIZE, SIZE, 1)),
        tf.keras.layers.Conv2D(FILTERS, 3, strides=2, padding="same", use_bias=False),
        tf.keras.layers.BatchNormalization(momentum=0.99, epsilon=models.BN_EPSILON),
        tf.keras.layers.ReLU(),
        tf.keras.layers.GlobalAveragePooling2D() if features == "mean" else
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(WAYS),
    ])
    set_trainable(net, params)
    return net


def set_trainable(net: tf.keras.Sequential, params: dict) -> None:
    conv, bn, dense = net.layers[0], net.layers[1], net.layers[4]
    conv.kernel.assign(params["conv0/w"])
    bn.gamma.assign(params["bn0/scale"])
    bn.beta.assign(params["bn0/offset"])
    dense.kernel.assign(params["dense/w"])
    dense.bias.assign(params["dense/b"])


def images(seed: int, count: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (count, SIZE, SIZE, 1)).astype(np.float32)


def tasks(seed: int, t: int = 3) -> tuple:
    labels = np.tile(np.arange(WAYS), 3)
    return (tf.constant(np.stack([images(seed + i) for i in range(t)])),
            tf.constant(np.tile(labels, (t, 1))),
            tf.constant(np.stack([images(seed + 100 + i) for i in range(t)])),
            tf.constant(np.tile(labels, (t, 1))))


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("features", ["flatten", "mean"])
def test_running_batch_norm_is_keras_batch_normalization(features):
    """Training passes normalise with the batch's statistics and update the moving ones pass by
    pass, as Keras's layer called with training=True; evaluation normalises with the moving
    statistics, as training=False."""
    model = small("running", features)
    params = params_of(model)
    net = keras_twin(params, features)
    xs, ys, xq, _ = tasks(10)
    state = maml.moving_statistics(model, params, (xs, ys, xq), ALPHA, 1)
    for i in range(xs.shape[0]):  # Keras: the support pass at theta, the query pass adapted
        set_trainable(net, params)
        close(net(xs[i], training=True), model.apply(params, xs[i]))
        adapted = maml.adapt(model, params, xs[i], ys[i], ALPHA, 1)
        set_trainable(net, adapted)
        close(net(xq[i], training=True), model.apply(adapted, xq[i]))
    bn = net.layers[1]
    close(state["bn0/mean"], bn.moving_mean, 1e-6)
    close(state["bn0/var"], bn.moving_variance, 1e-6)
    after = {**params, **state}
    set_trainable(net, after)
    x = images(99)
    close(net(x, training=False), model.for_evaluation().apply(after, x))
    assert not np.allclose(model.for_evaluation().apply(after, x), model.apply(after, x))


def test_running_statistics_of_stacked_workers_equal_each_workers_own():
    model = small("running")
    workers = [params_of(model, seed) for seed in (0, 5)]
    for w, p in enumerate(workers):  # moving statistics of their own
        workers[w] = {**p, "bn0/mean": p["bn0/mean"] + 0.1 * w, "bn0/var": p["bn0/var"] * (1 + w)}
    per_worker = [tasks(20 + 10 * w) for w in range(2)]
    stacked = {k: tf.stack([p[k] for p in workers]) for k in workers[0]}
    arrays = [tf.stack(parts) for parts in zip(*(t[:3] for t in per_worker))]
    together = maml.moving_statistics(model, stacked, arrays, ALPHA, 2, stacked=True)
    for w in range(2):
        alone = maml.moving_statistics(model, workers[w], per_worker[w][:3], ALPHA, 2)
        for k in model.state:
            close(together[k][w], alone[k], 1e-6)


@pytest.mark.parametrize("norm", ["running", "frozen"])
def test_the_step_trains_the_weights_and_sets_the_state_from_its_passes(norm):
    model = small(norm)
    params = params_of(model)
    step = maml.make_step(model, ALPHA, 1, 0.01)
    data = tasks(30)
    new, _, _, _ = step(params, optimizer.init({k: v.numpy() for k, v in params.items()}), *data)
    grads, _, _ = maml.meta_gradient(model, params, data, ALPHA, 1)
    for k in model.state:  # no gradient: the passes alone set them
        assert not np.any(grads[k])
        close(new[k], maml.moving_statistics(model, params, data[:3], ALPHA, 1)[k], 1e-6)
    assert sorted(new) == sorted(params)
    assert not np.allclose(new["conv0/w"], params["conv0/w"])


def test_frozen_batch_norm_is_a_fresh_keras_layer_in_inference_mode():
    """A Keras model never called with training=True: moving statistics 0 and 1, so batch norm
    is the scale and offset alone (x * scale / sqrt(1 + eps) + offset)."""
    model = small("frozen")
    params = params_of(model)
    x = images(3)
    ours = model.apply(params, x)
    close(keras_twin(params)(x, training=False), ours)
    h = tf.nn.conv2d(x, params["conv0/w"], 2, "SAME")
    h = tf.nn.relu(h * params["bn0/scale"] / np.sqrt(1 + models.BN_EPSILON) + params["bn0/offset"])
    close(tf.reshape(h, [6, -1]) @ params["dense/w"] + params["dense/b"], ours)
    close(model.apply(params, x[:2]), ours[:2])  # no statistics of the batch
    assert model.state == () and model.for_evaluation() is model


@pytest.mark.parametrize("norm,features", [("frozen", "flatten"), ("running", "mean")])
def test_meta_gradients_of_the_choices_match_finite_differences(norm, features):
    model = models.conv4(3, channels=1, image_size=8, filters=3, max_pool=False, blocks=2,
                         norm=norm, features=features)
    params = {k: tf.constant(v, tf.float64) for k, v in model.init(np.random.default_rng(1)).items()}
    rng = np.random.default_rng(2)
    data = (tf.constant(rng.normal(size=(2, 6, 8, 8, 1))), tf.constant(np.tile([0, 0, 1, 1, 2, 2], (2, 1))),
            tf.constant(rng.normal(size=(2, 6, 8, 8, 1))), tf.constant(np.tile([0, 1, 2, 0, 1, 2], (2, 1))))
    grads, _, _ = maml.meta_gradient(model, params, data, ALPHA, 2)

    def meta_loss(p):
        return float(tf.reduce_mean([maml.query_loss(model, p, [a[i] for a in data], ALPHA, 2)[0]
                                     for i in range(2)]))

    for name in ("conv0/w", "bn1/scale", "dense/w"):
        flat = params[name].numpy().ravel()
        for i in rng.choice(flat.size, 3, replace=False):
            moved = [flat.copy(), flat.copy()]
            moved[0][i] += 1e-6
            moved[1][i] -= 1e-6
            up, down = ({**params, name: tf.constant(m.reshape(params[name].shape))} for m in moved)
            numeric = (meta_loss(up) - meta_loss(down)) / 2e-6
            assert grads[name].numpy().ravel()[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_a_new_adam_each_run_is_a_fresh_optimiser_every_run(tmp_path):
    cfg = config.load(None, {"dataset": "sine", "workers": 2, "steps_per_run": 2, "steps": 6,
                             "eval_every": 6, "val_tasks": 2, "test_tasks": 0,
                             "checkpoint_steps": [], "engine": "sequential",
                             "adam_state": "reset"})
    final = Learner(cfg, tmp_path).train()
    engine = SequentialEngine(cfg)
    start = models.for_config(cfg).init(task_rng(cfg.seed, INIT))
    fresh, kept = start, start
    states = {w: optimizer.init(start) for w in range(2)}
    for step in range(0, cfg.steps, cfg.steps_per_run):
        results = engine.run(fresh, {w: optimizer.init(fresh) for w in range(2)}, step)
        fresh = merge.merge([results[w].params for w in range(2)], np.full(2, 0.5))
        results = engine.run(kept, states, step)  # adam_state: keep, for contrast
        kept = merge.merge([results[w].params for w in range(2)], np.full(2, 0.5))
        states = {w: results[w].opt_state for w in range(2)}
    for k, v in fresh.items():
        np.testing.assert_array_equal(final.theta[k], v)
    assert not np.array_equal(kept["dense0/w"], fresh["dense0/w"])


@pytest.mark.parametrize("key,value,message", [
    ("batch_norm", "moving", "batch_norm: choose one of"),
    ("features", "pool", "features: choose one of"),
    ("adam_state", "fresh", "adam_state: choose one of"),
])
def test_bad_choices_are_one_line_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config.load(None, {"data": "x.h5", key: value})


def test_the_sine_mlp_refuses_batch_norm_choices():
    for key, value in (("batch_norm", "frozen"), ("pixels", "raw")):
        with pytest.raises(ConfigError, match=f"{key}: sine tasks have no images"):
            config.load(None, {"dataset": "sine", key: value})


def test_pixels_are_the_stored_images_scaled_inverted_or_raw(synthetic_h5):
    from dmaml.tasks import FewShotSampler

    draws = {p: FewShotSampler(str(synthetic_h5), "train", 3, 1, 1, p).sample(
        np.random.default_rng(0)) for p in ("unit", "inverted", "raw")}
    unit, inverted, raw = (draws[p][0] for p in ("unit", "inverted", "raw"))
    assert unit.dtype == np.float32 and unit.min() >= 0 and unit.max() <= 1
    np.testing.assert_array_equal(raw, np.round(unit * 255))
    np.testing.assert_allclose(inverted, 1 - unit)
    np.testing.assert_array_equal(draws["unit"][1], draws["raw"][1])


def hand_made_run(folder, seed: int, scores: dict[int, float], **settings) -> str:
    """A finished Omniglot run folder with the given test scores (and a validation per step)."""
    folder.mkdir(parents=True)
    cfg = config.resolve(config.RunConfig(data="none.h5", seed=seed, steps=max(scores),
                                          checkpoint_steps=sorted(scores), **settings))
    config.dump(cfg, folder / "config.yaml")
    (folder / "run.json").write_text('{"status": "finished"}')
    (folder / "metrics.csv").write_text("step,val_loss,val_acc\n" + "".join(
        f"{step},0.5,{score}\n" for step, score in scores.items()))
    (folder / "test.csv").write_text("step,metric,mean,ci95,tasks\n" + "".join(
        f"{step},accuracy,{score},0.012,600\n" for step, score in scores.items()))
    return f"{folder}"


def test_the_ablation_table_judges_each_arm_against_the_paper_on_every_seed(tmp_path):
    from dmaml.report import ablation

    arms = {"default": [{500: 0.88, 1000: 0.90}, {500: 0.86, 1000: 0.91}],
            "frozen": [{500: 0.81, 1000: 0.70}, {500: 0.80, 1000: 0.72}],
            "central": [{500: 0.88, 1000: 0.89}]}
    settings = {"default": {}, "frozen": {"batch_norm": "frozen", "alpha": 2.0},
                "central": {"tasks_per_step": 512}}
    items = [f"{arm}=" + hand_made_run(tmp_path / arm / f"seed{seed}", seed, scores,
                                       **settings[arm])
             for arm, seeds in arms.items() for seed, scores in enumerate(seeds)]
    out = tmp_path / "tables" / "ablation.csv"
    assert ablation.main([*items, "--paper", "workflow/paper/tables.csv", "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index(["arm", "step"])
    assert table.loc[("default", 1000), "verdict"] == "better"  # 0.90, 0.91 against 0.82
    assert table.loc[("frozen", 500), "verdict"] == "="  # 0.81 and 0.80 against 0.81
    assert table.loc[("frozen", 1000), "verdict"] == "worse"
    assert table.loc[("frozen", 500), "changes"] == "alpha=2.0, batch_norm=frozen"
    assert table.loc[("default", 500), "changes"] == "default"
    # one worker with 512 tasks a step faces the paper's n = 16 (0.88 at 500, 0.89 at 1,000)
    assert table.loc[("central", 1000), "paper_workers"] == 16
    assert table.loc[("central", 1000), "verdict"] == "="
    assert table.loc[("default", 1000), "seed_mean"] == pytest.approx(0.905)
    text = out.with_suffix(".md").read_text()
    assert "| frozen | alpha=2.0, batch_norm=frozen | 1 | 32 | 1000 |" in text
    assert out.with_suffix(".png").is_file()
