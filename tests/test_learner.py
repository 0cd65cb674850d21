"""The DMAML central learner: plain MAML at n = 1, merges, reproducibility, resume, learning."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dmaml import checkpoint, config, maml, merge, models, optimizer
from dmaml.engines import WorkerResult
from dmaml.engines.sequential import SequentialEngine
from dmaml.evaluate import Evaluator
from dmaml.learner import Learner, TrainingDiverged, diverged, stop_signals
from dmaml.tasks import INIT, PROBE, TRAIN, SineSampler, make_sampler, sample_batch, task_rng


def sine(**overrides) -> config.RunConfig:
    base = {"dataset": "sine", "steps": 20, "eval_every": 10, "val_tasks": 5, "test_tasks": 0,
            "checkpoint_steps": []}
    return config.load(None, {**base, **overrides})


def theta_of(run, name="latest.npz"):
    return checkpoint.unpack("theta", checkpoint.load(run / "checkpoints" / name))


def rows(path, drop=("wall_s",)):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def test_one_worker_is_plain_maml(tmp_path):
    cfg = sine(steps=12, eval_every=4, engine="sequential")  # bit for bit: the same computation
    final = Learner(cfg, tmp_path).train()
    model = models.mlp()
    params = model.init(task_rng(cfg.seed, INIT))
    state = optimizer.init(params)
    step = maml.make_step(model, cfg.alpha, cfg.inner_steps, cfg.beta)
    sampler = SineSampler(cfg.shots, cfg.queries)
    for s in range(cfg.steps):
        tasks = sample_batch(sampler, task_rng(cfg.seed, TRAIN, 0, s), cfg.tasks_per_step)
        params, state, _, _ = step(params, state, *tasks)
    for k, v in params.items():
        np.testing.assert_array_equal(final.theta[k], v.numpy())
    np.testing.assert_array_equal(final.states[0].m["dense0/w"], state.m["dense0/w"].numpy())


def probe_scores(cfg: config.RunConfig, results: dict, start: int) -> np.ndarray:
    """Each worker's returned parameters adapted to the run's probe tasks, as at validation:
    the mean query loss (dmaml.merge)."""
    prober = Evaluator(models.for_config(cfg), make_sampler(cfg, "train"), "train",
                       cfg.merge_probe_tasks, cfg.seed, cfg.alpha, cfg.eval_inner_steps,
                       stream=PROBE)
    return np.array([prober(results[w].params, start).loss for w in sorted(results)])


@pytest.mark.parametrize("strategy", ["mean", "weighted", "drop_worst"])
def test_merged_parameters_follow_the_strategy(tmp_path, strategy):
    cfg = sine(workers=3, steps_per_run=2, steps=2, eval_every=2, merge=strategy,
               merge_temperature=0.5, merge_drop=0.34, engine="sequential")
    final = Learner(cfg, tmp_path).train()
    theta0 = models.mlp().init(task_rng(cfg.seed, INIT))
    results = SequentialEngine(cfg).run(theta0, {w: optimizer.init(theta0) for w in range(3)}, 0)
    scores = probe_scores(cfg, results, 0)
    assert len(set(scores)) == 3, "workers must return different parameters"
    if strategy == "mean":
        w = np.full(3, 1 / 3)
        assert not (tmp_path / "worker_scores.csv").exists(), "the mean merge scores nothing"
    else:
        if strategy == "weighted":
            w = np.exp(-(scores - scores.min()) / (0.5 * scores.std()))
            w /= w.sum()
        else:  # floor(0.34 * 3) = 1 worker left out
            w = (scores < scores.max()) / 2.0
        written = rows(tmp_path / "worker_scores.csv")
        assert [(r["step"], r["worker"]) for r in written] == [("2", "0"), ("2", "1"), ("2", "2")]
        np.testing.assert_allclose([float(r["score"]) for r in written], scores, rtol=1e-6)
        np.testing.assert_allclose([float(r["weight"]) for r in written], w, rtol=1e-6)
    for k in theta0:
        expected = sum(w[i] * results[i].params[k] for i in range(3))
        np.testing.assert_allclose(final.theta[k], expected, rtol=1e-5, atol=1e-7)
    assert final.states[2].t == 2, "each worker keeps its own Adam state"


def test_the_merge_judges_what_workers_return_not_the_tasks_they_drew(tmp_path):
    """With m = 1 every worker starts from the same theta, so its own training loss (taken before
    its update) only says how hard the tasks it drew were: judged by it, drop_worst would leave
    out the worker that drew the hardest tasks. It leaves out the worker whose returned
    parameters do worst on the probe tasks, the same tasks for every worker."""
    cfg = sine(workers=4, steps=1, eval_every=1, merge="drop_worst", merge_drop=0.25,
               engine="sequential")
    final = Learner(cfg, tmp_path).train()
    theta0 = models.mlp().init(task_rng(cfg.seed, INIT))
    results = SequentialEngine(cfg).run(theta0, {w: optimizer.init(theta0) for w in range(4)}, 0)
    own = np.array([results[w].loss for w in range(4)])
    scores = probe_scores(cfg, results, 0)
    assert np.argmax(own) != np.argmax(scores), "this seed must tell the two rankings apart"
    weights = [float(r["weight"]) for r in rows(tmp_path / "worker_scores.csv")]
    assert np.argmin(weights) == np.argmax(scores) and sorted(weights) == [0, 1 / 3, 1 / 3, 1 / 3]
    for k in theta0:
        expected = np.mean([results[w].params[k] for w in range(4) if w != np.argmax(scores)],
                           axis=0)
        np.testing.assert_allclose(final.theta[k], expected, rtol=1e-5, atol=1e-7)


def test_merge_weights():
    np.testing.assert_allclose(merge.weights("mean", [1, 2, 3, 4]), 0.25)
    # relative temperature: one standard deviation of the scores worse counts exp(-1/T) as much
    w = merge.weights("weighted", [0.0, 1.0], temperature=1.0)  # std 0.5
    np.testing.assert_allclose(w, np.array([1, np.exp(-2)]) / (1 + np.exp(-2)))
    np.testing.assert_allclose(merge.weights("weighted", [3.0, 13.0], temperature=1.0), w)
    np.testing.assert_allclose(merge.weights("weighted", [0.7, 0.7, 0.7]), 1 / 3)
    np.testing.assert_allclose(merge.weights("weighted", [0.7]), 1.0)
    np.testing.assert_array_equal(merge.weights("drop_worst", [3, 1, 2, 5], drop=0.5),
                                  [0, 0.5, 0.5, 0])
    np.testing.assert_array_equal(merge.weights("drop_worst", [3, 1], drop=0.99), [0, 1])
    assert [merge.dropped(n, 0.25) for n in (1, 2, 3, 4, 16, 32)] == [0, 0, 0, 1, 4, 8]
    assert merge.dropped(10, 0.7) == 7 and merge.dropped(5, 0.0) == 0


@pytest.mark.parametrize("setting, message", [
    ({"merge_drop": 1}, "merge_drop: must be the fraction .* in \\[0, 1\\) such as 0.25 \\(no "
                        "longer a count of workers\\), got 1"),
    ({"merge_drop": -0.1}, "merge_drop: must be the fraction"),
    ({"merge_temperature": 0}, "merge_temperature: must be a positive number"),
    ({"merge_probe_tasks": 1}, "merge_probe_tasks: must be an integer >= 2"),
])
def test_bad_merge_settings_are_clear_errors(setting, message):
    with pytest.raises(config.ConfigError, match=message):
        sine(merge="weighted", **setting)


def test_worker_schedule_reduces_workers(tmp_path):
    cfg = sine(workers=3, steps=20, eval_every=5, worker_schedule=[[10, 2], [15, 1]])
    Learner(cfg, tmp_path).train()
    assert [r["workers"] for r in rows(tmp_path / "metrics.csv")] == ["3", "3", "2", "1"]


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        Learner(sine(workers=2, seed=seed), tmp_path / name).train()
        runs[name] = theta_of(tmp_path / name)
    for k in runs["a"]:
        np.testing.assert_array_equal(runs["a"][k], runs["b"][k])
    assert rows(tmp_path / "a" / "metrics.csv") == rows(tmp_path / "b" / "metrics.csv")
    assert not np.array_equal(runs["a"]["dense0/w"], runs["c"]["dense0/w"])


def _train_cmd(out, **flags):
    args = [sys.executable, "-m", "dmaml.cli", "train", "--out", str(out)]
    for k, v in flags.items():
        args += [f"--{k}", str(v)]
    return args


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_numbers(tmp_path):
    flags = {"dataset": "sine", "workers": 2, "steps": 600, "eval_every": 20, "val_tasks": 5,
             "test_tasks": 20, "checkpoint_steps": "[200,600]"}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_train_cmd(tmp_path / "whole", **flags), check=True, env=env,
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, **flags), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = killed / "metrics.csv"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = rows(killed / "metrics.csv")
    assert 4 <= len(done) < 30, f"the kill must land mid-run (metrics rows: {len(done)})"
    subprocess.run(_train_cmd(killed, **flags), check=True, env=env, capture_output=True)
    assert rows(killed / "metrics.csv") == rows(tmp_path / "whole" / "metrics.csv")
    assert rows(killed / "test.csv") == rows(tmp_path / "whole" / "test.csv")
    for name in ("latest.npz", "step000600.npz"):
        a, b = theta_of(killed, name), theta_of(tmp_path / "whole", name)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow  # 2,000 MAML steps
def test_sine_learns_to_adapt(tmp_path):
    cfg = sine(steps=2000, eval_every=500)
    final = Learner(cfg, tmp_path).train()
    model = models.mlp()
    sampler = SineSampler(10, 10)
    adapted = Evaluator(model, sampler, "test", 200, 7, cfg.alpha, 1)(final.theta)
    unadapted = Evaluator(model, sampler, "test", 200, 7, cfg.alpha, 0)(final.theta)
    # measured (Intel Xeon, oneDNN on and off alike): adapted 0.51, unadapted 3.00; the bounds
    # leave 3x on each, far more than another CPU's float32 round-off moves a 2,000-step run
    assert adapted.mean < 0.5 * unadapted.mean, (adapted, unadapted)
    assert adapted.mean < 1.5


def test_divergence_stops_with_step_and_keeps_metrics(tmp_path):
    cfg = sine(steps=40, eval_every=10, alpha=1e19)
    with pytest.raises(TrainingDiverged, match=r"step \d+: worker\(s\) \[0\]"):
        Learner(cfg, tmp_path).train()
    assert (tmp_path / "metrics.csv").exists()
    assert '"status": "diverged"' in (tmp_path / "run.json").read_text()


@pytest.mark.slow  # 100 MAML steps of the conv model on real Omniglot
def test_omniglot_learns_far_above_chance(tmp_path, omniglot_h5):
    """A short 5-way 1-shot run on the real Omniglot background/evaluation split."""
    cfg = config.load(None, {"dataset": "omniglot", "data": str(omniglot_h5), "steps": 100,
                             "tasks_per_step": 8, "eval_every": 50, "val_tasks": 20,
                             "test_tasks": 100, "checkpoint_steps": [100]})
    Learner(cfg, tmp_path).train()
    test = rows(tmp_path / "test.csv")[0]
    assert float(test["mean"]) > 0.5, test  # chance is 0.2
    assert int(test["tasks"]) == 100


def test_a_signal_only_asks_the_run_to_stop(tmp_path):
    """Within stop_signals, SIGTERM is recorded instead of ending the process; after it, the
    handler before is back."""
    before = signal.getsignal(signal.SIGTERM)
    with stop_signals(tmp_path) as stop:
        assert stop.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_diverged_names_the_workers_with_a_non_finite_loss_or_parameters():
    state = optimizer.init({"w": np.zeros(2, np.float32)})
    ok = {"w": np.zeros(2, np.float32)}
    results = {0: WorkerResult(ok, state, 0.5, 0.0),
               1: WorkerResult({"w": np.array([0.0, np.inf], np.float32)}, state, 0.5, 0.0),
               2: WorkerResult(ok, state, float("nan"), 0.0)}
    assert diverged(results) == [1, 2]
    assert diverged({0: results[0]}) == []
