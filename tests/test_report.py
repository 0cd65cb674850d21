"""Tables and figures from real (small) run folders."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dmaml import config
from dmaml.cli import main
from dmaml.errors import ReportError
from dmaml.learner import Learner
from dmaml.report import tables


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for n in (1, 2):
        for seed in (0, 1):
            cfg = config.load(None, {"dataset": "sine", "workers": n, "seed": seed, "steps": 40,
                                     "eval_every": 10, "val_tasks": 5, "test_tasks": 30,
                                     "checkpoint_steps": [20, 40]})
            Learner(cfg, root / f"n{n}-s{seed}").train()
            dirs.append(root / f"n{n}-s{seed}")
    return dirs


def test_checkpoint_table_takes_the_best_seed_per_n(runs, tmp_path):
    table, frame = tables.checkpoint_table(runs)
    for n in (1, 2):
        finals = {s: pd.read_csv(d / "metrics.csv")["val_loss"].iloc[-1]
                  for d, s in zip(runs, (0, 1, 0, 1)) if f"n{n}-" in d.name}
        best = min(finals, key=finals.get)
        rows = table[table["workers"] == n]
        assert set(rows["seed"]) == {best} and list(rows["step"]) == [20, 40]
        test = pd.read_csv(next(d for d in runs if d.name == f"n{n}-s{best}") / "test.csv")
        assert list(rows["mean"]) == pytest.approx(list(test["mean"]))
    tables.write(table, "step", "Table T", frame, tmp_path / "t.csv")
    text = (tmp_path / "t.md").read_text()
    assert "| n (seed) | step 20 | step 40 |" in text and "over 30 test tasks" in text
    assert "workers in {1, 2}" in text and "seed in {0, 1}" in text
    assert list(pd.read_csv(tmp_path / "t.csv").columns[:5]) == ["workers", "seed", "step",
                                                                   "metric", "mean"]


def test_diverged_runs_are_marked(runs, tmp_path):
    info = json.loads((runs[0] / "run.json").read_text())
    (runs[0] / "run.json").write_text(json.dumps({**info, "status": "diverged"}))
    try:
        table, frame = tables.checkpoint_table(runs[:1])
        assert "†" in tables.markdown(table, "step", "T", frame)
    finally:
        (runs[0] / "run.json").write_text(json.dumps(info))


def test_shots_table_and_figures_through_the_cli(runs, tmp_path):
    evals, curves = [], []
    for d in runs:
        for k in (5, 10):
            evals.append(tmp_path / f"{d.name}-k{k}.json")
            assert main(["evaluate", "--run", str(d), "--step", "40", "--shots", str(k),
                         "--test_tasks", "20", "--out", str(evals[-1])]) == 0
        curves.append(tmp_path / f"{d.name}.csv")
        assert main(["evaluate", "--run", str(d), "--extrapolate", str(curves[-1])]) == 0
    assert main(["table", "shots", *map(str, evals), "--out", str(tmp_path / "t1.csv")]) == 0
    t1 = pd.read_csv(tmp_path / "t1.csv")
    assert sorted(set(t1["shots"])) == [5, 10] and len(t1) == 4
    for kind in ("workers", "steps_per_run", "split", "tasks"):
        assert main(["figure", kind, *map(str, runs), "--out", str(tmp_path / kind)]) == 0
        for suffix in (".png", ".pdf", ".txt"):
            assert (tmp_path / kind).with_suffix(suffix).stat().st_size > 0
    assert main(["figure", "extrapolation", *map(str, curves), "--out", str(tmp_path / "f2")]) == 0
    assert "seed in {0, 1}" in (tmp_path / "f2.txt").read_text()


def test_not_a_run_folder(tmp_path, caplog):
    with pytest.raises(ReportError, match="not a run folder"):
        tables.checkpoint_table([tmp_path])
    assert main(["figure", "workers", str(tmp_path), "--out", str(tmp_path / "f")]) == 2
    assert "not a run folder (no config.yaml)" in caplog.text
    assert not (tmp_path / "f.png").exists()
