"""`engine: auto` (the default): which engine a run gets, that its folder says so, and that a
resumed run keeps the engine it started with (so it stays bitwise reproducible)."""

from __future__ import annotations

import json

import pytest
import yaml

from dmaml.config import RunConfig, resolve
from dmaml.engines import choose
from dmaml.learner import Learner


def omniglot(data, **kw) -> RunConfig:
    settings = dict(dataset="omniglot", data=str(data), tasks_per_step=2, steps=4, eval_every=2,
                    val_tasks=2, test_tasks=0, checkpoint_steps=[], tensorboard=False, seed=3)
    return resolve(RunConfig(**{**settings, **kw}))


def test_auto_is_the_default():
    assert RunConfig().engine == "auto"
    assert resolve(RunConfig(data="x.h5")).engine == "auto"


@pytest.mark.parametrize(("settings", "cores", "engine"), [
    (dict(dataset="sine"), 8, "vectorized"),  # tiny models: one stacked computation wins
    (dict(dataset="sine", workers=64), 2, "vectorized"),
    (dict(workers=1), 8, "vectorized"),  # one worker: nothing to spread over processes
    (dict(workers=2), 4, "vectorized"),  # fewer workers than cores: the stack has them all
    (dict(workers=4), 1, "vectorized"),  # one core: processes would time-slice it
    (dict(workers=2), 2, "processes"),  # a conv4 worker per core
    (dict(workers=16), 4, "processes"),
    (dict(dataset="miniimagenet", workers=4), 2, "processes"),
])
def test_auto_picks_by_model_workers_and_cores(settings, cores, engine):
    cfg = resolve(RunConfig(data="x.h5", **settings))
    name, why = choose(cfg, cores)
    assert name == engine and why.startswith("auto: ") and f"{cores} core" in why


def test_a_named_engine_is_kept():
    for engine in ("sequential", "vectorized", "processes", "cluster"):
        cfg = resolve(RunConfig(data="x.h5", workers=4, engine=engine))
        assert choose(cfg, 8) == (engine, "set")


@pytest.mark.slow  # worker processes that each compile the conv model
def test_the_run_folder_names_the_engine_auto_chose(tmp_path, synthetic_h5):
    run = tmp_path / "run"
    Learner(omniglot(synthetic_h5, workers=2, threads=2), run).train()
    info = json.loads((run / "run.json").read_text())
    assert info["engine"] == "processes"
    assert info["engine_choice"] == "auto: 2 conv4 workers on 2 cores: a process per core"
    assert yaml.safe_load((run / "config.yaml").read_text())["engine"] == "auto"


@pytest.mark.slow  # two trainings with worker processes
def test_a_resumed_auto_run_keeps_its_engine(tmp_path, synthetic_h5, caplog):
    """Resumed on one core, where auto would pick `vectorized`, the run goes on with the
    `processes` engine it started with."""
    run = tmp_path / "run"
    Learner(omniglot(synthetic_h5, workers=2, threads=2), run).train()
    with caplog.at_level("INFO", logger="dmaml.learner"):
        Learner(omniglot(synthetic_h5, workers=2, threads=1, steps=6), run).train()
    info = json.loads((run / "run.json").read_text())
    assert info["engine"] == "processes" and info["step"] == 6
    assert info["engine_choice"] == "auto, kept from the run's start: processes"
    assert any("engine processes (auto, kept from the run's start" in r.getMessage()
               for r in caplog.records)
