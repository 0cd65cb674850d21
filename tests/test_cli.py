"""The ``dmaml`` command line: flags, run folder contents, one-line errors for bad input."""

from __future__ import annotations

import json

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


def test_missing_dataset_file(tmp_path, caplog):
    code = main(["train", "--dataset", "omniglot", "--data", str(tmp_path / "none.h5"),
                 "--out", str(tmp_path / "r")])
    assert code == 2 and "none.h5: no such dataset file" in caplog.text


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
