"""The vectorized and processes engines give the sequential engine's numbers, for every model.

Exactness is checked in two layers. In float64, the stacked computation the vectorized engine
compiles (many workers' parameters, each task an instance of the model's ``batched`` function,
XLA) gives the per-task loop's meta-gradient to 1e-9: the same maths. In float32 the engines are
compared end to end, where two amplifiers of round-off need tolerances that say so:

- Adam moves a parameter by about ``beta * sign(g)`` however small ``g`` is, so a gradient
  component within round-off of zero can step either way: parameters are compared tightly except
  for a few elements, which must be within one Adam step (2 * beta) per MAML step.
- A ReLU input within round-off of zero is gated open in one float32 computation and shut in
  another (which sums, and so which ReLU inputs land there, depends on the kernels oneDNN and XLA
  pick for the CPU: an AMD EPYC and an Intel Xeon differ). The loss is continuous there, its
  gradient is not: that channel's gradient, and what flows below it, differ by a few percent of
  the layer's largest, in a few elements. The sequential engine's own float32 result is then as
  far from float64 as the vectorized one.

So Adam's moments are compared element by element against the layer's largest moment (its
*scale*): all but a few elements (:data:`FEW`) within round-off (:data:`TIGHT`, 0.2% of the scale;
this Xeon's largest is 0.13%, with oneDNN on or off), and every element within one kink
(:data:`KINKS`, 5% of the scale; the deviation seen on an AMD EPYC was 0.3%). miniImageNet's
84x84 feature maps meet a kink about once in three forward passes, and what flows below one is
many elements: its moments are compared to 10% of the scale throughout, and its inner rate is
small so that a kink in the inner gradient does not reach the loss.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf

from dmaml import config, maml, models, optimizer
from dmaml.engines import create
from dmaml.engines.processes import ProcessesEngine, WorkerProcessError
from dmaml.engines.sequential import SequentialEngine
from dmaml.engines.vectorized import VectorizedEngine, task_parts
from dmaml.learner import Learner
from dmaml.tasks import INIT, TRAIN, make_sampler, sample_batch, task_rng

from .conftest import make_h5
from .test_learner import rows, theta_of

WORKERS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    return {"omniglot": make_h5(folder / "omniglot.h5", classes=8, per_class=4, size=28),
            "miniimagenet": make_h5(folder / "miniimagenet.h5", classes=6, per_class=4, size=84,
                                    channels=3)}


def settings(dataset: str, data: dict, **overrides) -> config.RunConfig:
    base = {"sine": {"steps_per_run": 2},
            "omniglot": {"data": str(data.get("omniglot")), "ways": 3, "tasks_per_step": 3,
                         "alpha": 0.1, "steps_per_run": 2},
            "miniimagenet": {"data": str(data.get("miniimagenet")), "ways": 3, "queries": 2,
                             "tasks_per_step": 2, "inner_steps": 1, "alpha": 1e-4}}[dataset]
    return config.load(None, {"dataset": dataset, "workers": WORKERS, "beta": 1e-3, "steps": 4,
                              "eval_every": 2, **base, **overrides})


def start(cfg: config.RunConfig, n: int):
    theta = models.for_config(cfg).init(task_rng(cfg.seed, INIT))
    return theta, {w: optimizer.init(theta) for w in range(n)}


TIGHT = 2e-3  # round-off, as a fraction of the layer's largest moment
FEW = 0.01  # fraction of a layer's elements that may be past TIGHT (at least 2)
# per model: (every element within this fraction of the largest, fraction that may be past TIGHT)
KINKS = {"sine": (0.05, FEW), "omniglot": (0.05, FEW), "miniimagenet": (0.1, 1.0)}


def assert_near(got: np.ndarray, ref: np.ndarray, scale: float, kinks: tuple[float, float],
                what: str) -> None:
    """Every element of ``got`` within ``kink * scale`` of ``ref``, all but a fraction ``few``
    within ``TIGHT * scale``, for ``kinks = (kink, few)`` (see the module docstring)."""
    kink, few = kinks
    off = np.abs(got - ref) / scale
    worst = np.unravel_index(np.argmax(off), off.shape)
    assert off.max() <= kink, (f"{what}: element {worst}, {got[worst]} against {ref[worst]}, is "
                               f"{off.max():.3g} of the largest (at most {kink})")
    past = int(np.sum(off > TIGHT))
    assert past <= max(2, few * off.size), (f"{what}: {past} of {off.size} elements past "
                                            f"{TIGHT} of the largest (at most {few:.0%})")


def assert_same(results: dict, reference: dict, cfg: config.RunConfig) -> None:
    """Engine results equal to float32 round-off and ReLU kinks (see the module docstring).
    Losses are continuous (relative 1e-4; seen: 1e-5); accuracies count argmax decisions, which
    flip only at a tie of two logits within round-off (relative 1e-4)."""
    kinks = KINKS[cfg.dataset]
    assert sorted(results) == sorted(reference)
    for w, ref in reference.items():
        got = results[w]
        assert got.loss == pytest.approx(ref.loss, rel=1e-4), w
        assert got.metric == pytest.approx(ref.metric, rel=1e-4, abs=1e-6), w
        assert float(got.opt_state.t) == float(ref.opt_state.t)
        for k, p in ref.params.items():
            scale = np.abs(ref.opt_state.m[k]).max()
            assert_near(got.opt_state.m[k], ref.opt_state.m[k], scale, kinks, f"worker {w} m {k}")
            assert_near(np.sqrt(got.opt_state.v[k]), np.sqrt(ref.opt_state.v[k]), scale, kinks,
                        f"worker {w} sqrt(v) {k}")
            # Adam moves an element by about beta whatever its gradient: one that a kink or
            # round-off turned moves by at most 2 beta per MAML step
            off = np.abs(got.params[k] - p)
            assert off.max() <= 2 * cfg.beta * cfg.steps_per_run, (w, k, off.max())
            assert np.sum(off > 1e-5) <= max(2, FEW * off.size), (w, k, np.sum(off > 1e-5))


def test_the_tolerance_admits_kinks_not_errors():
    """The deviation seen on an AMD EPYC (11 of 36,864 elements at 0.3% of the largest) passes;
    one element off by a tenth, or 2% of the elements past round-off, fail."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 3, 64, 64)).astype(np.float32)
    scale = float(np.abs(ref).max())
    kinks = KINKS["omniglot"]
    amd = ref.copy()
    amd.flat[rng.choice(ref.size, 11, replace=False)] += 3e-3 * scale
    assert_near(amd, ref, scale, kinks, "amd")
    far = ref.copy()
    far.flat[7] += 0.1 * scale
    with pytest.raises(AssertionError, match="0.1 of the largest"):
        assert_near(far, ref, scale, kinks, "far")
    many = ref.copy()
    many.flat[:int(0.02 * ref.size)] += 3e-3 * scale
    with pytest.raises(AssertionError, match="elements past"):
        assert_near(many, ref, scale, kinks, "many")


def _float64_setup(dataset: str, data: dict, n: int = 2, t: int = 2):
    cfg = settings(dataset, data, tasks_per_step=t)
    model = models.for_config(cfg)
    sampler = make_sampler(cfg)
    tasks = [sample_batch(sampler, task_rng(0, TRAIN, w, 0), t) for w in range(n)]
    tasks = tuple(np.stack(part).astype(np.float64 if part[0].dtype == np.float32 else np.int32)
                  for part in zip(*tasks))
    params = [{k: v.astype(np.float64) for k, v in model.init(np.random.default_rng(w)).items()}
              for w in range(n)]
    return model, params, tasks


@pytest.mark.parametrize("dataset,first_order", [
    ("sine", False), ("sine", True),
    # the conv models compile slowly: the whole suite only (test_vectorized_equals_sequential
    # keeps one conv case in the fast lane)
    pytest.param("omniglot", False, marks=pytest.mark.slow),
    pytest.param("omniglot", True, marks=pytest.mark.slow),
    pytest.param("miniimagenet", False, marks=pytest.mark.slow),
    pytest.param("miniimagenet", True, marks=pytest.mark.slow)])
def test_stacked_meta_gradient_is_the_per_task_loop_in_float64(data, dataset, first_order):
    """Two workers with different parameters, two tasks each, two inner steps (one for the
    slow-to-compile miniImageNet model), under XLA."""
    model, params, tasks = _float64_setup(dataset, data)
    steps = 1 if dataset == "miniimagenet" else 2
    stacked = tf.function(lambda p, *t: maml.meta_gradient_stacked(
        model, p, t, 0.1, steps, first_order), jit_compile=True)
    grads, losses, metrics = stacked({k: tf.constant(np.stack([p[k] for p in params]))
                                      for k in params[0]}, *tasks)
    for w, p in enumerate(params):
        ref, loss, metric = maml.meta_gradient(
            model, {k: tf.constant(v) for k, v in p.items()},
            tuple(part[w] for part in tasks), 0.1, steps, first_order)
        assert float(losses[w]) == pytest.approx(float(loss), rel=1e-12)
        assert float(metrics[w]) == pytest.approx(float(metric), rel=1e-12)
        for k, g in ref.items():
            np.testing.assert_allclose(grads[k][w], g, rtol=1e-9, atol=1e-12 * np.abs(g).max())


# (dataset, first_order, n); each new stack shape of a conv model costs a compilation: one conv
# case in the fast lane, the others in the whole suite
CASES = [("sine", False, 1), ("sine", False, WORKERS), ("sine", True, 1), ("sine", True, WORKERS),
         ("omniglot", False, WORKERS),
         *(pytest.param(*case, marks=pytest.mark.slow) for case in [
             ("omniglot", False, 1), ("omniglot", True, 1), ("omniglot", True, WORKERS),
             ("miniimagenet", False, 1), ("miniimagenet", False, WORKERS)])]


@pytest.fixture(scope="module")
def engines(data):
    """Sequential and vectorized engines per (dataset, first_order), built once each."""
    cache = {}

    def get(dataset: str, first_order: bool):
        if (dataset, first_order) not in cache:
            cfg = settings(dataset, data, first_order=first_order)
            cache[dataset, first_order] = cfg, SequentialEngine(cfg), VectorizedEngine(cfg)
        return cache[dataset, first_order]

    yield get
    for _, sequential, vectorized in cache.values():
        sequential.close()
        vectorized.close()


@pytest.mark.parametrize("dataset,first_order,n", CASES)
def test_vectorized_equals_sequential(engines, dataset, first_order, n):
    cfg, sequential, vectorized = engines(dataset, first_order)
    theta, states = start(cfg, n)
    assert_same(vectorized.run(theta, states, 4), sequential.run(theta, states, 4), cfg)


def test_vectorized_continues_from_states_of_different_ages(engines):
    """A run that continues from earlier states, with workers of different step counts (run as
    separate stacks, since the stacked Adam update shares one count)."""
    cfg, sequential, vectorized = engines("sine", False)
    theta, states = start(cfg, WORKERS)
    first = sequential.run(theta, states, 0)
    states = {0: first[0].opt_state, 1: first[1].opt_state, 2: states[2]}
    assert vectorized.chunks(states) == [[0, 1], [2]]
    assert_same(vectorized.run(first[0].params, states, 2),
                sequential.run(first[0].params, states, 2), cfg)


def test_task_parts_are_the_fewest_that_fit():
    assert task_parts(workers=1, tasks=32, bytes_per_task=10, part_bytes=320) == 1
    assert task_parts(workers=1, tasks=32, bytes_per_task=10, part_bytes=319) == 2
    assert task_parts(workers=4, tasks=32, bytes_per_task=10, part_bytes=40) == 32
    assert task_parts(workers=5, tasks=32, bytes_per_task=10, part_bytes=40) == 32  # 1 a part
    assert task_parts(workers=1, tasks=12, bytes_per_task=10, part_bytes=50) == 3  # divides 12


@pytest.mark.parametrize("dataset", ["sine", pytest.param("omniglot", marks=pytest.mark.slow)])
def test_vectorized_in_task_parts_equals_sequential(engines, dataset):
    """Tasks taken one at a time in the compiled loop: the same numbers."""
    cfg, sequential, _ = engines(dataset, False)
    engine = VectorizedEngine(cfg, part_bytes=1)
    theta, states = start(cfg, WORKERS)
    assert engine.steps == {} and engine.step_fn(WORKERS) is engine.steps[cfg.tasks_per_step]
    assert_same(engine.run(theta, states, 0), sequential.run(theta, states, 0), cfg)
    engine.close()


@pytest.mark.parametrize("ways,shots,queries,batched", [
    (3, 1, 1, True), (5, 3, 1, True),  # 6 and 20 examples: like 5-way and 10-way 1-shot
    (7, 3, 1, False),  # 28: like 5-way 5-shot with one query (30), 2.2x faster per task
    (8, 2, 2, False)])  # 32: like 20-way 1-shot (40)
def test_vectorized_batches_small_tasks_only(data, ways, shots, queries, batched):
    """Tasks of more examples than the model batches well run in the per-task loop."""
    engine = VectorizedEngine(settings("omniglot", data, ways=ways, shots=shots, queries=queries))
    if batched:
        assert engine.per_task is None
    else:
        assert isinstance(engine.per_task, SequentialEngine)
    engine.close()


def test_vectorized_splits_workers_that_do_not_fit(engines):
    cfg, _, reference = engines("sine", False)
    engine = VectorizedEngine(cfg, memory_budget=1)
    theta, states = start(cfg, WORKERS)
    assert engine.chunks(states) == [[0], [1], [2]]
    assert_same(engine.run(theta, states, 0), reference.run(theta, states, 0), cfg)
    engine.close()


@pytest.fixture(scope="module")
def processes(data):
    """One processes engine per dataset (2 processes for 3 workers on 2 cores), shared."""
    cache = {}

    def get(dataset: str):
        if dataset not in cache:
            cfg = settings(dataset, data)
            cache[dataset] = cfg, ProcessesEngine(cfg, processes=2)
        return cache[dataset]

    yield get
    for _, engine in cache.values():
        engine.close()


@pytest.mark.parametrize("dataset,n", [
    ("sine", 1), ("sine", WORKERS),
    # each process compiles the conv model: the whole suite only
    pytest.param("omniglot", WORKERS, marks=pytest.mark.slow),
    pytest.param("miniimagenet", WORKERS, marks=pytest.mark.slow)])
def test_processes_equal_sequential(processes, engines, dataset, n):
    """n = 1 only for one model: which workers take part is not the model's business, and each
    new stack shape costs every process a compilation."""
    cfg, engine = processes(dataset)
    _, sequential, _ = engines(dataset, False)
    theta, states = start(cfg, n)
    assert_same(engine.run(theta, states, 4), sequential.run(theta, states, 4), cfg)
    assert len(engine.last_compute) == min(n, 2)


@pytest.mark.slow
def test_killed_worker_process_is_restarted_then_a_clear_error(processes, engines):
    """A killed process is restarted and its share redone (same numbers); once no restarts are
    left, the next death is a clear error, not a hang."""
    cfg, engine = processes("sine")
    _, sequential, _ = engines("sine", False)
    theta, states = start(cfg, WORKERS)
    engine.run(theta, states, 0)
    engine.restarts_left = 1
    with ThreadPoolExecutor(1) as pool:  # a hang fails the test instead of blocking it
        os.kill(engine.procs[1].pid, signal.SIGKILL)
        redone = pool.submit(engine.run, theta, states, 2).result(timeout=180)
        assert_same(redone, sequential.run(theta, states, 2), cfg)
        os.kill(engine.procs[0].pid, signal.SIGKILL)
        future = pool.submit(engine.run, theta, states, 2)
        with pytest.raises(WorkerProcessError,
                           match=r"worker process 0 \(workers \[0, 2\]\) died .* no restarts"):
            future.result(timeout=120)
    with pytest.raises(WorkerProcessError, match="closed"):
        engine.run(theta, states, 2)


def test_create_knows_every_local_engine(data):
    for name, kind in (("sequential", SequentialEngine), ("vectorized", VectorizedEngine)):
        engine = create(settings("sine", data, engine=name))
        assert isinstance(engine, kind)
        engine.close()


@pytest.mark.parametrize("dataset,name", [  # the convolutional model compiles for minutes: slow
    ("sine", "vectorized"), pytest.param("omniglot", "vectorized", marks=pytest.mark.slow),
    pytest.param("omniglot", "processes", marks=pytest.mark.slow)])
def test_probe_scores_and_merge_are_the_same_on_every_engine(data, tmp_path, dataset, name):
    """The weighted merge scores what the engine returns, in the learner: every engine gives the
    sequential engine's probe scores, weights and merged parameters (to the tolerances above)."""
    cfg = settings(dataset, data, merge="weighted", merge_probe_tasks=4, steps=2, eval_every=2,
                   val_tasks=2, test_tasks=0, checkpoint_steps=[], tensorboard=False)
    engine = ProcessesEngine(cfg, processes=2) if name == "processes" else VectorizedEngine(cfg)
    runs = {}
    for label, used in (("sequential", SequentialEngine(cfg)), (name, engine)):
        Learner(cfg, tmp_path / label, engine=used).train()
        runs[label] = (rows(tmp_path / label / "worker_scores.csv", drop=()),
                       theta_of(tmp_path / label))
    (ref_rows, ref_theta), (got_rows, got_theta) = runs["sequential"], runs[name]
    assert len(ref_rows) == WORKERS * cfg.steps // cfg.steps_per_run
    assert [(r["step"], r["worker"]) for r in got_rows] == [(r["step"], r["worker"])
                                                            for r in ref_rows]
    # one run: later runs start from parameters that differ by the kinks above, which near-zero
    # losses magnify; a weight moves by a score's difference over the scores' spread
    for column, rel in (("score", 1e-4), ("weight", 1e-2)):
        np.testing.assert_allclose([float(r[column]) for r in got_rows],
                                   [float(r[column]) for r in ref_rows], rtol=rel)
    for k, p in ref_theta.items():  # within an Adam step of beta per MAML step (see above)
        assert np.abs(got_theta[k] - p).max() <= 2 * cfg.beta * cfg.steps, k
