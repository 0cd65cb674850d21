"""The ``dmaml`` command line: flags, run folder contents, one-line errors for bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from dmaml import config
from dmaml.cli import build_parser, main
from dmaml.config import ConfigError

SINE = ["--dataset", "sine", "--steps", "10", "--eval_every", "5", "--val_tasks", "3"]


def test_flags_override_the_config_file(tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({"dataset": "sine", "workers": 4, "alpha": 0.02}))
    args = build_parser().parse_args(["train", "--config", str(run_yaml), "--out", "x",
                                      "--workers", "2", "--beta", "1e-3",
                                      "--checkpoint_steps", "[5,10]", "--first_order", "true"])
    from dmaml.cli import _overrides

    cfg = config.load(args.config, _overrides(args))
    assert (cfg.workers, cfg.alpha, cfg.beta, cfg.checkpoint_steps, cfg.first_order) == (
        2, 0.02, 1e-3, [5, 10], True)
    assert cfg.tasks_per_step == 10 and cfg.queries == 10  # Table 6 defaults for sine


def test_train_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SINE, "--checkpoint_steps", "[10]", "--test_tasks", "20",
                 "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 10
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["tensorflow"] and info["git"]
    assert (out / "metrics.csv").read_text().startswith("step,runs,workers,wall_s,train_loss")
    assert (out / "test.csv").read_text().splitlines()[1].startswith("10,mse,")
    assert (out / "checkpoints" / "step000010.npz").exists()
    assert main(["evaluate", "--run", str(out), "--step", "10", "--test_tasks", "30",
                 "--shots", "5"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tasks"] == 30 and result["shots"] == 5 and result["metric"] == "mse"


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "cifar"], "dataset: unknown dataset 'cifar'"),
    (["--workers", "0"], "workers: must be an integer >= 1"),
    (["--alpha", "-0.1"], "alpha: must be a positive number"),
    (["--steps_per_run", "3"], "steps: 10 is not a multiple of steps_per_run=3"),
    (["--merge", "median"], "merge: choose one of"),
    (["--worker_schedule", "[[5,2]]", "--workers", "1"], "worker_schedule: worker counts"),
])
def test_bad_settings_name_the_key(tmp_path, caplog, flags, message):
    assert main(["train", *SINE, *flags, "--out", str(tmp_path / "r")]) == 2
    assert message in caplog.text
    assert not (tmp_path / "r" / "metrics.csv").exists()


def test_unknown_key_in_config_file(tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("dataset: sine\nwokers: 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['wokers'\]"):
        config.load(run_yaml)


def test_shots_above_images_per_class(tmp_path, caplog, synthetic_h5):
    code = main(["train", "--dataset", "omniglot", "--data", str(synthetic_h5), "--shots", "6",
                 "--steps", "2", "--eval_every", "1", "--out", str(tmp_path / "r")])
    assert code == 2 and "has 6 images, fewer than shots + queries = 6 + 1" in caplog.text


def test_missing_dataset_file(tmp_path, caplog, monkeypatch):
    """A file of the user's: how to make one with the data commands (no Snakemake rule builds
    it); the workflow's own file: the data stage's Snakemake command."""
    none = tmp_path / "none.h5"
    code = main(["train", "--dataset", "omniglot", "--data", str(none), "--out", str(tmp_path / "r")])
    assert code == 2 and [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"{none}: no such dataset file; set --data (`data:`) to an existing file, or make this one "
        f"with `dmaml prepare-omniglot --out {none}` (`dmaml prepare-miniimagenet --source DIR "
        f"--out {none}` for miniImageNet)"]
    assert "snakemake" not in caplog.text
    caplog.clear()
    monkeypatch.chdir(tmp_path)
    for data in ("resources/omniglot.h5", "./resources/omniglot.h5",
                 str(tmp_path / "resources" / "omniglot.h5")):
        assert main(["train", "--dataset", "omniglot", "--data", data, "--out", "r"]) == 2
        assert (f"{Path(data)}: no such dataset file; build it with the data stage (`snakemake "
                "--cores 2 resources/omniglot.h5` in the workflow's folder) or set --data "
                "(`data:`) to an existing file") in caplog.text


def test_damaged_checkpoint_to_evaluate_is_one_line(tmp_path, caplog):
    """A kept checkpoint overwritten with garbage: one line naming the file and what to do, not
    numpy's words."""
    out = tmp_path / "r"
    step = out / "checkpoints" / "step000004.npz"
    step.parent.mkdir(parents=True)
    config.dump(config.load(None, {"dataset": "sine", "steps": 4}), out / "config.yaml")
    step.write_bytes(b"garbage")
    assert main(["evaluate", "--run", str(out), "--step", "4"]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"{step}: damaged checkpoint (not a readable .npz file); evaluate another kept "
        "step with --step, or train the run again into a new --out"]


def test_checkpoint_of_another_config_is_refused(tmp_path, caplog):
    out = str(tmp_path / "r")
    assert main(["train", *SINE, "--out", out]) == 0
    assert main(["train", *SINE, "--alpha", "0.5", "--steps", "20", "--out", out]) == 2
    assert "checkpoint of a different config (alpha: 0.01 -> 0.5)" in caplog.text
    # more steps alone is a continuation, not a different config
    assert main(["train", *SINE, "--steps", "20", "--out", out]) == 0


def test_help_documents_every_setting(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in config.FIELDS:
        assert f"--{name}" in text


def _train_settings(argv: list[str]) -> config.RunConfig:
    from dmaml.cli import _overrides

    return config.load(None, _overrides(build_parser().parse_args(["train", "--out", "x",
                                                                   *argv])))


@pytest.mark.parametrize("tokens", [["5,10"], ["[5,10]"], ["5", "10"], ["[5]", "10"]])
def test_list_flags_accept_the_usual_forms(tokens):
    assert _train_settings([*SINE, "--checkpoint_steps", *tokens]).checkpoint_steps == [5, 10]


@pytest.mark.parametrize("tokens", [["[[0,2],[5,1]]"], ["0,2", "5,1"], ["[0,2]", "[5,1]"]])
def test_worker_schedule_flag_forms(tokens):
    cfg = _train_settings([*SINE, "--workers", "2", "--worker_schedule", *tokens])
    assert cfg.worker_schedule == [[0, 2], [5, 1]]


def test_empty_list_flag_means_no_checkpoints():
    assert _train_settings([*SINE, "--checkpoint_steps", "[]"]).checkpoint_steps == []


@pytest.mark.parametrize("flag, token, expected", [
    ("--checkpoint_steps", "abc", "expected a list of steps such as 500,1000 or [500,1000]"),
    ("--checkpoint_steps", "5.5", "expected a list of steps"),
    ("--worker_schedule", "[[0,x]]", "expected [from_step, workers] pairs such as"),
])
def test_unreadable_list_flag_says_the_form(capsys, flag, token, expected):
    with pytest.raises(SystemExit) as exit_:
        main(["train", *SINE, flag, token, "--out", "x"])
    err = " ".join(capsys.readouterr().err.split())
    assert exit_.value.code == 2 and f"{flag}: cannot read {token!r}; {expected}" in err


@pytest.mark.parametrize("text, key", [
    ("checkpoint_steps: 500,1000\n", "checkpoint_steps: must be a list of steps"),
    ("checkpoint_steps: '[500]'\n", "checkpoint_steps: must be a list of steps"),
    ("worker_schedule: '[[0,1]]'\n", "worker_schedule: must be a list of [from_step, workers]"),
])
def test_config_file_rejects_a_string_for_a_list(tmp_path, text, key):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("dataset: sine\n" + text)
    with pytest.raises(ConfigError, match=re.escape(key)):
        config.load(run_yaml)


def _help(capsys, *command: str) -> str:
    """The --help text of ``command``, its whitespace collapsed (argparse wraps lines)."""
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_each_datasets_default(capsys):
    text = _help(capsys, "train")
    assert "[default: None]" not in text
    assert "--shots V k, support examples per class (sine: support points) " \
           "[default: sine 10, omniglot 1, miniimagenet 1]" in text
    assert "--eval_inner_steps V adaptation steps at validation and test " \
           "[default: sine 1, omniglot 3, miniimagenet 10]" in text
    assert "[default: omniglot resources/omniglot.h5, miniimagenet resources/miniimagenet.h5]" \
           in text


def test_evaluate_help_prints_a_plain_percent(capsys):
    text = _help(capsys, "evaluate")
    assert "95% interval" in text and "%%" not in text


@pytest.mark.parametrize("command, flag, values", [
    (["train", "--out", "x"], "--steps_per_run", ["5"]),
    (["train", "--out", "x"], "--checkpoint_steps", ["5,10", "20"]),
    (["train", "--out", "x"], "--diverged_ok", []),
    (["evaluate", "--run", "r"], "--test_tasks", ["7"]),
    (["evaluate", "--run", "r"], "--eval_inner_steps", ["2"]),
    (["figure", "workers", "r", "--out", "f"], "--max_step", ["50"]),
])
def test_flags_take_either_spelling(command, flag, values):
    parse = build_parser().parse_args
    dashed = "--" + flag[2:].replace("_", "-")
    underscored = "--" + flag[2:].replace("-", "_")
    assert parse([*command, dashed, *values]) == parse([*command, underscored, *values]) != \
        parse(command)


@pytest.mark.parametrize("command, example", [
    (["train"], "--steps-per-run is --steps_per_run"),
    (["evaluate"], "--test-tasks is --test_tasks"),
    (["figure"], "--max-step is --max_step"),
])
def test_help_says_flags_take_either_spelling(capsys, command, example):
    assert f"Flags may be spelt with - or _ ({example})" in _help(capsys, *command)


def test_unknown_flag_prints_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--stepz", "5", "--out", "x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("usage: dmaml train") and "unrecognized arguments: --stepz 5" in err


@pytest.fixture
def run_folder(tmp_path):
    """A run folder as `dmaml train` leaves it, with checkpoints of steps 5 and 10 kept."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    config.dump(config.load(None, {"dataset": "sine"}), run / "config.yaml")
    for name in ("step000005.npz", "step000010.npz", "latest.npz"):
        (run / "checkpoints" / name).write_bytes(b"")
    return run


def test_evaluate_a_step_never_kept_lists_the_kept_steps(run_folder, caplog):
    assert main(["evaluate", "--run", str(run_folder), "--step", "7"]) == 2
    assert "no checkpoint of step 7; steps kept: [5, 10]" in caplog.text


def test_evaluate_a_missing_run_folder(tmp_path, caplog):
    assert main(["evaluate", "--run", str(tmp_path / "none")]) == 2
    assert "none: no such run folder" in caplog.text


def test_evaluate_a_folder_without_config(run_folder, caplog):
    (run_folder / "config.yaml").unlink()
    assert main(["evaluate", "--run", str(run_folder)]) == 2
    assert "config.yaml: not found" in caplog.text
