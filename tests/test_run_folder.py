"""A run folder never contradicts its configuration and loses nothing: changed test settings are
re-tested from the kept checkpoints, a damaged latest checkpoint falls back to the one before it,
a refused run writes nothing, and progress, run.json and TensorBoard show where a run stands."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml

from dmaml import checkpoint, config, models, progress
from dmaml.errors import CheckpointError, DatasetError
from dmaml.evaluate import Evaluator
from dmaml.learner import Learner
from dmaml.run_folder import RunFolder
from dmaml.state import TrainingState
from dmaml.tasks import INIT, make_sampler, task_rng

from .conftest import make_h5
from .test_learner import rows, sine, theta_of

FLAGS = {"steps": 60, "eval_every": 10, "val_tasks": 3, "test_tasks": 20,
         "checkpoint_steps": [20, 40, 60]}


def test_changed_test_settings_are_retested_from_kept_checkpoints(tmp_path):
    """A finished run given fewer test tasks, then fewer checkpoint steps: test.csv follows
    config.yaml, with the scores a run trained with those settings has."""
    run = tmp_path / "run"
    Learner(sine(**FLAGS), run).train()
    Learner(sine(**{**FLAGS, "test_tasks": 10}), run).train()
    fresh = tmp_path / "fresh"
    Learner(sine(**{**FLAGS, "test_tasks": 10}), fresh).train()
    assert rows(run / "test.csv") == rows(fresh / "test.csv")
    assert [r["tasks"] for r in rows(run / "test.csv")] == ["10"] * 3

    Learner(sine(**{**FLAGS, "test_tasks": 10, "checkpoint_steps": [20, 60]}), run).train()
    assert [r["step"] for r in rows(run / "test.csv")] == ["20", "60"]


def test_a_test_step_never_kept_is_a_clear_error_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    Learner(sine(**FLAGS), run).train()
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "test.csv")}
    with pytest.raises(CheckpointError, match=r"step\(s\) \[30\] are to be tested but their "
                                              r"parameters were never kept.*delete"):
        Learner(sine(**{**FLAGS, "checkpoint_steps": [20, 30, 60]}), run).train()
    assert {name: (run / name).read_bytes() for name in before} == before
    with pytest.raises(CheckpointError, match="at step 60, beyond steps=40"):
        Learner(sine(**{**FLAGS, "steps": 40, "checkpoint_steps": [20, 40]}), run).train()


def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    """latest.npz truncated (a killed copy): the run resumes from previous.npz with a warning and
    ends bitwise equal to a run never interrupted."""
    whole = tmp_path / "whole"
    Learner(sine(**FLAGS), whole).train()
    run = tmp_path / "run"
    Learner(sine(**{**FLAGS, "steps": 30, "checkpoint_steps": [20]}), run).train()
    latest = run / "checkpoints" / "latest.npz"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        Learner(sine(**FLAGS), run).train()
    previous = run / "checkpoints" / "previous.npz"
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("dmaml")]
    assert warnings == [f"{latest}: damaged checkpoint (not a readable .npz file); resuming "
                        f"from the checkpoint before it, {previous} (step 20)"]
    assert rows(run / "metrics.csv") == rows(whole / "metrics.csv")
    assert rows(run / "test.csv") == rows(whole / "test.csv")
    for k, v in theta_of(whole).items():
        np.testing.assert_array_equal(theta_of(run)[k], v)


def test_damaged_checkpoints_with_none_to_fall_back_on_are_a_clear_error(tmp_path):
    """Both damaged: both named; latest.npz damaged with no previous.npz, or missing with
    previous.npz damaged: what deleting does, once."""
    run = tmp_path / "run"
    Learner(sine(steps=20), run).train()
    latest, previous = run / "checkpoints" / "latest.npz", run / "checkpoints" / "previous.npz"
    latest.write_bytes(b"PK\x03\x04 truncated")
    previous.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        Learner(sine(steps=40), run).train()
    assert str(e.value) == (f"{latest} and {previous}: both damaged checkpoints (not readable .npz "
                            "files); delete both to train the run again from step 0")
    latest.unlink()
    with pytest.raises(CheckpointError) as e:
        Learner(sine(steps=40), run).train()
    assert str(e.value) == (f"{latest}: missing, and {previous}: damaged checkpoint (not a "
                            "readable .npz file); delete it to train the run again from step 0")
    previous.rename(latest)
    with pytest.raises(CheckpointError) as e:
        Learner(sine(steps=40), run).train()
    assert str(e.value) == (f"{latest}: damaged checkpoint (not a readable .npz file), and no "
                            "previous.npz to fall back on; delete it to train the run again from "
                            "step 0")


@pytest.mark.parametrize("settings, message", [
    ({"data": "NOT_H5"}, "not a readable HDF5 file"),
    ({"ways": 9}, "fewer than ways=9"),
    ({"shots": 4}, "fewer than shots \\+ queries"),
])
def test_a_refused_run_writes_nothing(tmp_path, settings, message):
    """Data that cannot serve the settings stops the run before its folder exists."""
    data = make_h5(tmp_path / "small.h5", classes=6, per_class=4, size=28)
    (tmp_path / "NOT_H5").write_text("not HDF5")
    cfg = config.load(None, {"dataset": "omniglot", "data": str(data), "ways": 3, "shots": 1,
                             "queries": 1, "tasks_per_step": 2, "steps": 2, "eval_every": 1,
                             **settings})
    if cfg.data == "NOT_H5":
        cfg.data = str(tmp_path / "NOT_H5")
    out = tmp_path / "run"
    with pytest.raises(DatasetError, match=message):
        Learner(cfg, out).train()
    assert not out.exists()


def test_progress_eta_and_tensorboard(tmp_path, monkeypatch, caplog):
    """A line at once, one after the compiling first run, progress between validations (every
    PROGRESS_EVERY seconds: here 0) with speed and time left, the same in run.json, and every
    curve in TensorBoard's event file."""
    monkeypatch.setattr(progress, "PROGRESS_EVERY", 0.0)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="dmaml"):
        Learner(sine(steps=30, eval_every=10, test_tasks=5, checkpoint_steps=[30]), run).train()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == f"{run}: loading data"
    assert lines[1].startswith(f"{run}: engine vectorized (auto: sine's small MLP on ")
    assert "first run done in" in lines[3] and "compilation included" in lines[3]
    assert f"{run}: step 10: validation on 5 tasks (the first compiles the evaluation)" in lines
    assert f"{run}: step 30: test on 5 tasks (the first compiles the evaluation)" in lines
    between = [m for m in lines if m.startswith(f"{run}: step 5/30 | n=1 |")]
    assert between and "s/step" in between[0] and "left" in between[0]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["updated"] > 0 and info["step_s"] > 0
    assert info["engine"] == "vectorized" and info["cores"] >= 1 and info["cpu"]  # for wall_s

    import tensorflow as tf

    tags = {}
    for path in (run / "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    assert tags["val/mse"] == [10, 20, 30] and tags["test/mse"] == [30]
    assert {"train/loss", "train/mse", "val/loss", "seconds_per_step"} <= set(tags)


def test_checkpoint_steps_beyond_the_run_are_a_warning(tmp_path, caplog):
    """A by-hand run shortened below the default checkpoint steps says it will test nothing."""
    Learner(sine(steps=20, test_tasks=5, checkpoint_steps=[10, 500, 1000]), tmp_path).train()
    assert "checkpoint_steps [500, 1000] lie beyond steps=20: their parameters are not kept " \
           "nor tested" in caplog.text


def test_eta_counts_training_validation_and_testing(tmp_path):
    """Only steps the run reaches count (checkpoint step 500 is beyond its 100 steps); the first
    run and the first evaluation of each kind compile and are left out."""
    cfg = sine(steps=100, eval_every=10, val_tasks=5, test_tasks=50,
               checkpoint_steps=[50, 100, 500])
    clock = progress.Progress(cfg, tmp_path)
    clock.ran(30.0, 1)  # the first run: compilation
    assert clock.time_left(0) is None and clock.step_s() is None  # nothing measured yet
    for _ in range(20):
        clock.ran(0.1, 1)
    assert clock.step_s() == pytest.approx(0.1)
    assert clock.time_left(20) == pytest.approx(8.0)  # 80 steps at 0.1 s; evaluation not yet timed
    clock.evaluated("validation", 60.0, 5)  # the first validation: compilation
    assert clock.time_left(20) == pytest.approx(8.0)
    clock.evaluated("validation", 0.5, 5)
    # and 8 validations of 5 tasks, 2 tests of 50, at 0.1 s a task
    assert clock.time_left(20) == pytest.approx(8.0 + 4.0 + 10.0)
    assert clock.time_left(60) == pytest.approx(4.0 + 2.0 + 5.0)
    assert clock.time_left(100) == 0.0


def test_evaluator_of_the_retest_is_the_runs_own(tmp_path):
    """The re-test of a kept checkpoint scores what a fresh evaluation of that file scores."""
    run = tmp_path / "run"
    cfg = sine(**FLAGS)
    Learner(cfg, run).train()
    Learner(sine(**{**FLAGS, "test_tasks": 7}), run).train()
    theta = checkpoint.unpack("theta", checkpoint.load(run / "checkpoints" / "step000040.npz"))
    score = Evaluator(models.for_config(cfg), make_sampler(cfg, "test"), "test", 7,
                      cfg.eval_seed, cfg.alpha, cfg.eval_inner_steps)(theta)
    row = rows(run / "test.csv")[1]
    assert float(row["mean"]) == score.mean and row["tasks"] == "7"


def test_a_retest_keeps_the_runs_timings(tmp_path):
    """A re-test trains nothing: run.json's timings (step_s, what `dmaml status` shows, probe_s,
    wall_s, seconds_per_step) stay those of the training, also with no run.json left, as
    Snakemake removes a job's output before it runs the job. (A finished weighted run, made by
    hand: its checkpoints and no run.json.)"""
    run = tmp_path / "run"
    flags = {"steps": 4, "checkpoint_steps": [4], "workers": 2, "merge": "weighted"}
    cfg = sine(**flags, test_tasks=2)
    s = TrainingState.fresh(models.for_config(cfg).init(task_rng(cfg.seed, INIT)), cfg.workers)
    s.step, s.elapsed, s.step_s, s.probe_s = 4, 10.0, 0.5, 2.0  # as training measured them
    folder = RunFolder(run, cfg, classification=False)
    folder.prepare()
    folder.keep(4, s.theta)
    folder.save_latest(s)
    Learner(sine(**flags, test_tasks=1), run).train()
    info = json.loads((run / "run.json").read_text())
    assert rows(run / "test.csv")[0]["tasks"] == "1"  # re-tested
    assert {k: info.get(k) for k in ("step_s", "probe_s", "wall_s", "seconds_per_step")} == {
        "step_s": 0.5, "probe_s": 2.0, "wall_s": 10.0, "seconds_per_step": 2.5}


def test_a_damaged_kept_checkpoint_to_retest_says_what_to_do(tmp_path):
    """A finished run (made by hand) whose kept step000004.npz is garbage, given other test
    settings: one error naming the file, not numpy's words."""
    run = tmp_path / "run"
    cfg = sine(steps=4, checkpoint_steps=[4], test_tasks=2)
    s = TrainingState.fresh(models.for_config(cfg).init(task_rng(cfg.seed, INIT)), cfg.workers)
    s.step = 4
    folder = RunFolder(run, cfg, classification=False)
    folder.prepare()
    folder.save_latest(s)
    folder.kept(4).write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as e:
        Learner(sine(steps=4, checkpoint_steps=[4], test_tasks=1), run).train()
    assert str(e.value) == (f"{folder.kept(4)}: damaged checkpoint (not a readable .npz file); "
                            f"delete {run} to train the run again, or leave step 4 out of "
                            "checkpoint_steps")


def test_the_first_times_left_say_they_are_estimates(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(progress, "PROGRESS_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="dmaml"):
        Learner(sine(steps=80, eval_every=20, val_tasks=3), tmp_path).train()
    lines = [r.getMessage() for r in caplog.records if " s/step, " in r.getMessage()]
    step = {int(m.split(": step ")[1].split("/")[0]): m for m in lines}
    assert "left (early estimate: from 3 timed steps, evaluation not timed yet)" in step[4]
    assert "early estimate: from 39 timed steps)" in step[40]  # the second validation timed
    assert "estimate" not in step[80].split(": step ")[1]


def test_worker_scores_after_a_resume_are_those_of_a_whole_run(tmp_path):
    """A weighted run resumed from its checkpoint (rows a killed run wrote past it are cut) has
    the worker scores, weights, metrics and parameters of a run never interrupted."""
    flags = {**FLAGS, "workers": 3, "merge": "weighted", "merge_probe_tasks": 4}
    whole = tmp_path / "whole"
    Learner(sine(**flags), whole).train()
    run = tmp_path / "run"
    Learner(sine(**{**flags, "steps": 30, "checkpoint_steps": [20]}), run).train()
    first = json.loads((run / "run.json").read_text())["probe_s"]
    with open(run / "worker_scores.csv", "a") as f:
        f.write("40,0,9.9,1.0\n")  # as written by a run killed after its last checkpoint
    Learner(sine(**flags), run).train()
    info = json.loads((run / "run.json").read_text())
    saved = TrainingState.from_arrays(checkpoint.load(run / "checkpoints" / "latest.npz"), 3)
    assert info["probe_s"] == round(saved.probe_s, 3) > first > 0  # scoring, every session
    assert info["step_s"] == saved.step_s > 0  # the checkpoint keeps what run.json shows
    scores = rows(run / "worker_scores.csv")
    assert len(scores) == 3 * 60 and scores == rows(whole / "worker_scores.csv")
    assert rows(run / "metrics.csv") == rows(whole / "metrics.csv")
    for k, v in theta_of(whole).items():
        np.testing.assert_array_equal(theta_of(run)[k], v)


def test_a_mean_run_resumes_from_a_checkpoint_of_older_merge_settings(tmp_path):
    """Settings the mean merge never reads (merge_drop was a count, merge_probe_tasks did not
    exist) do not stop a mean run from resuming; for drop_worst they do."""
    run = tmp_path / "run"
    Learner(sine(steps=20), run).train()
    path = run / "checkpoints" / "latest.npz"
    arrays = dict(checkpoint.load(path))
    older = yaml.safe_load(str(arrays["config"]))
    older["merge_drop"] = 1
    del older["merge_probe_tasks"]
    arrays["config"] = np.asarray(yaml.safe_dump(older))
    checkpoint.save(path, arrays)
    Learner(sine(steps=40), run).train()
    assert rows(run / "metrics.csv")[-1]["step"] == "40"
    assert not (run / "worker_scores.csv").exists()
    checkpoint.save(path, arrays)
    (run / "checkpoints" / "previous.npz").unlink()  # else the resume falls back to it
    with pytest.raises(CheckpointError, match=r"different config \(merge: 'mean' -> 'drop_worst', "
                                              r"merge_drop: 1 -> 0.25, merge_probe_tasks"):
        Learner(sine(steps=40, merge="drop_worst"), run).train()


def test_training_state_keeps_the_checkpoint_format(tmp_path):
    """The typed state writes the arrays of every earlier version (theta/, opt<w>/, step,
    elapsed, acc as [loss sum, metric sum, runs], dropped) and reads them back unchanged."""
    cfg = sine(workers=2)
    theta = models.for_config(cfg).init(task_rng(cfg.seed, INIT))
    s = TrainingState.fresh(theta, cfg.workers)
    s.step, s.elapsed, s.dropped = 7, 1.5, 1
    s.add_run(np.float32(0.25), np.float32(0.5))
    s.add_run(0.75, 1.0)
    arrays = s.to_arrays()
    assert {"step", "elapsed", "acc", "dropped", "opt0/t", "opt1/t"} <= set(arrays)
    assert arrays["acc"].dtype == np.float64 and list(arrays["acc"]) == [1.0, 1.5, 2.0]
    back = TrainingState.from_arrays(checkpoint.load(_saved(tmp_path, arrays)), cfg.workers)
    assert (back.step, back.elapsed, back.runs, back.dropped) == (7, 1.5, 2, 1)
    for k, v in theta.items():
        np.testing.assert_array_equal(back.theta[k], v)
        np.testing.assert_array_equal(back.states[1].m[k], s.states[1].m[k])
    assert back.take_means() == (0.5, 0.75) and back.runs == 0 and back.loss_sum == 0.0
    assert (back.step_s, back.probe_s) == (None, 0.0)  # not measured yet
    s.step_s, s.probe_s = 0.25, 3.5
    back = TrainingState.from_arrays(checkpoint.load(_saved(tmp_path, s.to_arrays())), cfg.workers)
    assert (back.step_s, back.probe_s) == (0.25, 3.5)
    earlier = {k: v for k, v in s.to_arrays().items() if k not in ("step_s", "probe_s")}
    back = TrainingState.from_arrays(checkpoint.load(_saved(tmp_path, earlier)), cfg.workers)
    assert (back.step, back.step_s, back.probe_s) == (7, None, 0.0)  # an earlier version's


def _saved(folder, arrays):
    checkpoint.save(folder / "state.npz", arrays)
    return folder / "state.npz"
