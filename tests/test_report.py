"""Tables and figures from real (small) run folders."""

from __future__ import annotations

import json
import shutil

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from dmaml import config
from dmaml.cli import main
from dmaml.errors import ReportError
from dmaml.learner import Learner
from dmaml.report import SETTINGS, figure7, figures, paper, tables

from .conftest import ROOT


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
    assert list(pd.read_csv(tmp_path / "t.csv").columns[:9]) == [
        "dataset", "ways", "shots", "workers", "steps_per_run", "tasks_per_step", "seed", "step",
        "metric"]


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
    assert sorted(set(t1["K"])) == [5, 10] and len(t1) == 4
    assert set(t1["shots"]) == {10} and set(t1["step"]) == {40}  # training shots, last step
    for kind in ("workers", "steps_per_run", "split", "tasks"):
        assert main(["figure", kind, *map(str, runs), "--out", str(tmp_path / kind)]) == 0
        for suffix in (".png", ".pdf", ".txt"):
            assert (tmp_path / kind).with_suffix(suffix).stat().st_size > 0
    assert main(["figure", "extrapolation", *map(str, curves), "--out", str(tmp_path / "f2")]) == 0
    caption = (tmp_path / "f2.txt").read_text()
    assert "each n's seed with the best validation score of seeds 0, 1" in caption
    chosen = sorted(set(tables.best_seeds(tables.load_runs(runs))["seed"]))  # one line per n
    assert (f"seed={chosen[0]}" if len(chosen) == 1 else "seed in {0, 1}") in caption


def test_not_a_run_folder(tmp_path, caplog):
    with pytest.raises(ReportError, match="not a run folder"):
        tables.checkpoint_table([tmp_path])
    assert main(["figure", "workers", str(tmp_path), "--out", str(tmp_path / "f")]) == 2
    assert "not a run folder (no config.yaml)" in caplog.text
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("mean, ci, expected", [
    (0.98765, 0.01234, (0.988, 0.012)), (12.345, 1.67, (12.3, 1.7)), (3.4154, 1.0740, (3.4, 1.1)),
    (1234.5, 123.4, (1230, 120)), (1.0, 0.0, (1.0, 0.0))])
def test_scores_are_rounded_to_what_the_ci_supports(mean, ci, expected):
    assert tables.round_to_ci(mean, ci) == pytest.approx(expected)
    assert tables.cell(0.98765, 0.01234) == "0.988 ± 0.012"
    assert tables.scores_text(0.6070001, 0.0302853) == ("0.607", "0.030")
    assert tables.scores_text(1234.5, 123.4) == ("1230", "120")
    assert tables.cell(float("nan"), float("nan")) == "—"


def test_csv_is_rounded_and_names_its_configuration(runs, tmp_path):
    table, frame = tables.checkpoint_table(runs)
    tables.write(table, "step", "Table T", frame, tmp_path / "t.csv")
    csv = pd.read_csv(tmp_path / "t.csv")
    for key in ("dataset", "ways", "shots", "workers", "steps_per_run", "tasks_per_step"):
        assert key in csv.columns
    assert set(csv["dataset"]) == {"sine"} and set(csv["tasks_per_step"]) == {10}
    for mean, ci in zip(csv["mean"], csv["ci95"]):
        assert (mean, ci) == tables.round_to_ci(mean, ci)
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert [",".join(tables.scores_text(m, c)) in line
            for line, m, c in zip(lines[1:], table["mean"], table["ci95"])] == [True] * len(table)


def test_a_title_that_is_not_text_is_an_error(runs, tmp_path):
    table, frame = tables.checkpoint_table(runs)
    with pytest.raises(ReportError, match="title must be text.*got a dict"):
        tables.write(table, "step", {"Table 2": "Omniglot"}, frame, tmp_path / "t.csv")
    assert not (tmp_path / "t.md").exists()


def test_captions_print_no_lists(runs, tmp_path):
    table, frame = tables.checkpoint_table(runs)
    text = tables.markdown(table, "step", "T", frame)
    assert "(of 0, 1)" in text and "[" not in text
    figures.workers_figure(runs, tmp_path / "f3", max_step=40)
    caption = (tmp_path / "f3.txt").read_text()
    assert "over 5 fixed tasks" in caption and "seeds 0, 1" in caption and "[" not in caption


def test_table_has_an_html_view_for_the_report(runs, tmp_path):
    table, frame = tables.checkpoint_table(runs)
    tables.write(table, "step", "Table T: sine <test>", frame, tmp_path / "t.csv")
    html = (tmp_path / "t.html").read_text()
    assert "Table T: sine &lt;test&gt;" in html and "<table" in html and "step 40" in html
    row = table[(table["workers"] == 2) & (table["step"] == 40)].iloc[0]
    assert tables.cell(row["mean"], row["ci95"]) in html and "over 30 test tasks" in html


def test_figure3_says_what_lines_and_bands_are(runs):
    fig, ax = plt.subplots()
    frame = tables.load_runs(runs)
    figures.plot_curves(ax, frame, ["workers"], lambda v: f"n = {v[0]}", trend=True)
    figures.settings_note(fig, frame)
    assert fig.texts[0].get_text() == ("sine: N = 1, k = 10, m = 1, t = 10; seeds 0, 1; each point: "
                                       "validation on 5 fixed tasks")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "n = 1 (2 seeds)" in labels and any("±1 std over" in label for label in labels)
    assert any("dashed" in label and "cubic" in label for label in labels)
    data = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    trends = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert trends and max(t.get_linewidth() for t in trends) < min(d.get_linewidth() for d in data)
    plt.close(fig)


@pytest.fixture
def timed(runs, tmp_path):
    """Copies of the runs with known times: step_s 0.1 and 0.3 (seeds 0, 1), n = 2 on engine
    processes, and wall_s of metrics.csv 10 s a validation for seed 0, 20 s for seed 1."""
    copies = []
    for d in runs:
        copy = tmp_path / "runs" / d.name
        shutil.copytree(d, copy, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
        seed = int(d.name[-1])
        info = json.loads((copy / "run.json").read_text())
        info.update(engine="processes" if d.name.startswith("n2") else "vectorized",
                    cpu="Test CPU 3000", cores=2, threads=0, step_s=0.1 + 0.2 * seed,
                    seconds_per_step=0.5 + seed)
        (copy / "run.json").write_text(json.dumps(info))
        m = pd.read_csv(copy / "metrics.csv")
        m["wall_s"] = (1 + seed) * 10.0 * (m.index + 1)
        m.to_csv(copy / "metrics.csv", index=False)
        copies.append(copy)
    return copies


def test_wall_clock_figures_name_the_machine_and_the_seconds(timed, tmp_path):
    for kind in ("workers_wall", "tasks_wall"):
        assert main(["figure", kind, *map(str, timed), "--out", str(tmp_path / kind)]) == 0
        for suffix in (".png", ".pdf", ".txt", ".csv", ".md"):
            assert (tmp_path / kind).with_suffix(suffix).stat().st_size > 0
        caption = (tmp_path / kind).with_suffix(".txt").read_text()
        assert "engine processes, vectorized on Test CPU 3000, 2 cores" in caption
        assert "TensorFlow intra-op threads 0 (0: TensorFlow's choice)" in caption
        assert "compilation" in caption and "validation excluded" in caption
    table = pd.read_csv(tmp_path / "workers_wall.csv")
    assert list(table.columns) == [
        "dataset", "ways", "shots", "workers", "steps_per_run", "tasks_per_step", "engine", "cpu",
        "cores", "threads", "seeds", "step_s", "step_s_std", "seconds_per_step", "wall_s"]
    assert list(table["workers"]) == [1, 2] and list(table["engine"]) == ["vectorized", "processes"]
    assert list(table["seeds"]) == ["0, 1"] * 2 and set(table["cores"]) == {2}
    assert table["step_s"].tolist() == pytest.approx([0.2, 0.2])  # mean of 0.1 and 0.3
    assert table["step_s_std"].tolist() == pytest.approx([0.1, 0.1])  # ddof 0, as the bands
    assert table["seconds_per_step"].tolist() == pytest.approx([1.0, 1.0])
    walls = [json.loads((d / "run.json").read_text())["wall_s"] for d in timed if d.name[1] == "1"]
    assert table["wall_s"].iloc[0] == pytest.approx(sum(walls) / 2, rel=5e-3)  # 3 digits
    md = (tmp_path / "workers_wall.md").read_text()
    assert "| sine | 1 | 10 | 1 | 1 | 10 | vectorized | Test CPU 3000 | 2 | 0 | 0, 1 | 0.2 |" in md
    assert "compilation" in md


def test_wall_clock_curves_are_at_the_mean_seconds_over_seeds(timed):
    fig, ax = plt.subplots()
    frame = tables.load_runs(timed)
    figures.plot_curves(ax, frame, ["workers"], lambda v: f"n = {v[0]}", x="wall")
    line = next(line for line in ax.get_lines() if line.get_label().startswith("n = 1"))
    steps = len(pd.read_csv(timed[0] / "metrics.csv"))
    assert list(line.get_xdata()) == pytest.approx([15.0 * (i + 1) for i in range(steps)])
    assert ax.get_xscale() == "log" and "seconds" in ax.get_xlabel()
    figures.settings_note(fig, frame, figures.machine_text(frame))
    assert "engine processes, vectorized" in fig.texts[0].get_text()
    plt.close(fig)


def test_runs_without_timing_say_so(runs, tmp_path):
    """Runs made before run.json recorded the machine: the caption says what is missing."""
    frame = tables.load_runs(runs).assign(engine=None, cpu=None, cores=None, threads=None)
    assert figures.machine_text(frame).startswith("machine not recorded (runs made before")


def test_metrics_without_seconds_is_a_clear_error(timed, tmp_path, caplog):
    m = pd.read_csv(timed[0] / "metrics.csv")
    m.drop(columns="wall_s").to_csv(timed[0] / "metrics.csv", index=False)
    assert main(["figure", "workers_wall", *map(str, timed), "--out", str(tmp_path / "f")]) == 2
    assert f"{timed[0]}/metrics.csv: no wall_s column" in caplog.text
    assert not (tmp_path / "f.png").exists()


@pytest.fixture(scope="module")
def strategies(runs, tmp_path_factory):
    """The mean runs (n = 1, 2) and one run of n = 2 for each other merge strategy."""
    root = tmp_path_factory.mktemp("strategies")
    others = {"weighted": {"merge": "weighted", "merge_temperature": 0.5},
              "drop": {"merge": "drop_worst"}, "schedule": {"worker_schedule": [[20, 1]]}}
    for name, extra in others.items():
        cfg = config.load(None, {"dataset": "sine", "workers": 2, "steps": 40, "eval_every": 10,
                                 "val_tasks": 5, "test_tasks": 30, "checkpoint_steps": [20, 40],
                                 **extra})
        Learner(cfg, root / name).train()
    return [*runs, *(root / name for name in others)]


STRATEGY_NAMES = {"mean", "weighted T=0.5", "drop_worst 0.25", "mean; n=1 from step 20"}


def test_table7_has_a_row_per_strategy_and_no_paper_values(strategies, tmp_path):
    table, frame = tables.checkpoint_table(strategies)
    assert set(table["strategy"]) == STRATEGY_NAMES and "merge" not in table
    assert len(table[(table["workers"] == 2)]) == 4 * 2  # 4 strategies x 2 checkpoints
    table = paper.compare(table, paper.load_paper(ROOT / "workflow/paper/tables.csv"), "table7")
    assert set(table["verdict"]) == {"-"}
    tables.write(table, "step", "Table 7", frame, tmp_path / "t7.csv")
    text = (tmp_path / "t7.md").read_text()
    assert "| strategy, n (seed) | step 20 | step 40 |" in text
    assert "| weighted T=0.5, 2 (0) |" in text and "| mean; n=1 from step 20, 2 (0) |" in text
    assert "| paper |" not in text  # the paper has no Table 7: no rows of its values
    assert "The paper has no value for any cell of this table: nothing is compared." in text
    assert set(pd.read_csv(tmp_path / "t7.csv")["strategy"]) == STRATEGY_NAMES


def test_tables_of_one_strategy_keep_their_layout(runs):
    assert tables.row_keys(tables.load_runs(runs)) == ["workers"]


def test_figure7_a_line_per_strategy_and_its_configuration(strategies, tmp_path):
    figure7.merge_figure(strategies, tmp_path / "f7")
    for suffix in (".png", ".pdf"):
        assert (tmp_path / "f7").with_suffix(suffix).stat().st_size > 0
    caption = (tmp_path / "f7.txt").read_text()
    assert caption.startswith("Figure 7: validation score for each merge strategy")
    assert "n = 2, t = 10, m = 1, 40 MAML steps; strategies: 'drop_worst 0.25', 'mean', " \
           "'mean; n=1 from step 20', 'weighted T=0.5'" in caption
    assert ("This figure cannot answer its question: 40 MAML steps at m = 1, while the paper's "
            "divergence begins after 1,500 (its Section 4.3); n = 2 at m = 1, while the paper's "
            "Table 2 diverges at n >= 8 only.") in caption
    assert "softmax(-(s - min s) / (T std s))" in caption and "seeds 0, 1" in caption \
        and "[" not in caption
    assert "Lower panels: the highest minus the lowest probe score of the workers" in caption
    spreads = figure7.probe_spreads(tables.load_runs(strategies).assign(line=lambda f: f["strategy"]))
    assert set(spreads[2]) == {"weighted T=0.5", "drop_worst 0.25"}  # the merges that score
    for spread in spreads[2].values():
        assert list(spread.index) == list(range(1, 41)) and (spread >= 0).all()


@pytest.mark.parametrize("m, steps, workers, seeds, reasons", [
    (1, 40, 2, 2, ["40 MAML steps at m = 1", "n = 2 at m = 1"]),
    (1, 4000, 16, 2, []),  # Table 2's setting, long enough, many workers, seeds
    (50, 40, 2, 2, []),  # at m > 1 the mean merge loses from the start: no step or n limit
    (50, 1000, 16, 1, ["one seed per strategy"]),
    (1, 40, 1, 2, ["no run merges workers"]),
])
def test_figure7_says_when_its_runs_cannot_answer(m, steps, workers, seeds, reasons):
    setting = dict.fromkeys(SETTINGS, 0) | dict(dataset="omniglot", merge="mean", strategy="mean")
    runs = pd.DataFrame([setting | dict(workers=n, steps_per_run=m if n > 1 else 1, steps=steps,
                                        seed=seed)
                         for n in {1, workers} for seed in range(seeds)])
    limits = figure7.figure7_limits(runs)
    assert [r for r in reasons if r not in limits] == []
    assert (limits == "") == (not reasons)


def test_figure7_legend_names_each_strategy(strategies):
    fig, ax = plt.subplots()
    frame = tables.load_runs(strategies).assign(line=lambda f: f["strategy"])
    figures.plot_curves(ax, frame[frame["workers"] == 2], ["line"], lambda v: v[0])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"mean (2 seeds)", "weighted T=0.5 (1 seed)", "mean; n=1 from step 20 (1 seed)"} <= set(labels)
    assert "band: ±1 std over seeds" in labels  # mean's two seeds have one
    plt.close(fig)


def test_figure7_of_one_seed_promises_no_bands_and_says_it_cannot_answer(strategies, tmp_path):
    one = [d for d in strategies if not d.name.endswith("s1")]  # seed 0 of the mean runs only
    fig, ax = plt.subplots()
    frame = tables.load_runs(one)
    figures.plot_curves(ax, frame[frame["workers"] == 2], ["strategy"], lambda v: v[0])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "band: ±1 std over seeds" not in labels and not ax.collections
    assert "solid: the seed's run (no band: one seed)" in labels
    plt.close(fig)
    figure7.merge_figure(one, tmp_path / "f7")
    caption = (tmp_path / "f7.txt").read_text()
    assert "one seed per strategy, so strategies cannot be told apart from seed luck." in caption
    assert "Lines: one seed each (0), no bands" in caption and "±1 std" not in caption
