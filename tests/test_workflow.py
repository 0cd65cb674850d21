"""The Snakemake workflow: lint, the jobs each target plans, re-runs, and the quick preset end
to end on real Omniglot (generated Omniglot-format zips where ../shared/data is absent)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from dmaml.report import tables

from .conftest import OMNIGLOT_DATA, ROOT, default_sigint, make_omniglot_source

pytest.importorskip("snakemake")


def copy_workflow(dest: Path) -> Path:
    """The workflow with its own source tree, as a user's clone has it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, dest)
    for name in ("workflow", "presets", "envs"):
        shutil.copytree(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def planned(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts of a dry run's 'Job stats' table."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stats = result.stdout.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


def test_lint_is_clean(workflow):
    result = snakemake(workflow, "--lint")
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr


def test_snakefmt_is_clean():
    """The Snakemake community's formatter (pinned in the test extra), as the workflow catalog
    checks it; settings in pyproject.toml."""
    pytest.importorskip("snakefmt")
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    done = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *map(str, files)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_table2_plans_the_paper_grid(workflow):
    jobs = planned(snakemake(workflow, "-n", "results/tables/table2.csv"))
    assert jobs == {"download_omniglot": 1, "preprocess_omniglot": 1, "train_dmaml": 6 * 3,
                    "make_table": 1}


@pytest.mark.parametrize("target, trainings", [
    ("table1", 12), ("table3", 18), ("table4", 18), ("fig2", 12), ("fig3", 18), ("fig4", 12),
    ("fig5", 42), ("fig6", 18), ("figures", 120), ("fig3_wall", 18), ("fig5_wall", 42),
    ("fig7", 27), ("table7", 27)])
def test_every_target_plans(workflow, target, trainings):
    assert planned(snakemake(workflow, "-n", target))["train_dmaml"] == trainings


def test_figure7_reuses_table2s_runs_and_names_the_others(workflow):
    """Figure 7 (and Table 7) train Table 2's mean runs of n = 1, 16, 32 once for both, put the
    other merges beside them under table2/ and the worker schedule under fig7_schedule/."""
    both = snakemake(workflow, "-n", "table2", "fig7", "table7")
    assert planned(both)["train_dmaml"] == 18 + 12 + 6
    commands = snakemake(workflow, "-n", "-p", "fig7").stdout
    folders = set(re.findall(r"--out '?results/runs/([^ ']+)/seed\d", commands))
    assert {f"table2/omniglot-5w1s-n{n}-m1-t32-{merge}-mean" for n in (16, 32)
            for merge in ("mean", "weighted", "drop_worst")} <= folders
    assert "table2/omniglot-5w1s-n1-m1-t32-mean-mean" in folders
    assert {f"fig7_schedule/omniglot-5w1s-n{n}-m1-t32-mean-mean" for n in (16, 32)} <= folders
    assert len(folders) == 9 and "--worker_schedule '[[1000,4]]'" in commands


def test_figure7_where_the_mean_merge_loses(workflow):
    """presets/fig7-local-steps.yaml: Table 2's setting at m = 50 with its 32 tasks per step split
    over n = 16 and 32, every merge beside Table 2's runs, Table 2's n = 1 run the reference."""
    preset = ["--configfile", str(ROOT / "presets/fig7-local-steps.yaml")]
    both = snakemake(workflow, "-n", "table2", "fig7", "table7", *preset)
    assert planned(both)["train_dmaml"] == 18 + 24
    commands = snakemake(workflow, "-n", "-p", "fig7", *preset).stdout
    folders = set(re.findall(r"--out '?results/runs/([^ ']+)/seed\d", commands))
    pairs = ((16, 2), (32, 1))
    assert folders == {f"table2/omniglot-5w1s-n{n}-m50-t{t}-{merge}-mean" for n, t in pairs
                       for merge in ("mean", "weighted", "drop_worst")} | {
        "table2/omniglot-5w1s-n1-m1-t32-mean-mean"} | {
        f"fig7_schedule/omniglot-5w1s-n{n}-m50-t{t}-mean-mean" for n, t in pairs}
    assert "--worker_schedule '[[1000,4]]'" in commands
    # m = 50 needs evaluations at multiples of 50: an override that breaks it is named at once
    bad = snakemake(workflow, "-n", "fig7", *preset, "--config", "train={eval_every: 20}")
    assert bad.returncode != 0
    assert "experiments.fig7: eval_every: 20 is not a multiple of steps_per_run=50" in (
        bad.stdout + bad.stderr)


def test_table5_needs_a_miniimagenet_source(workflow):
    result = snakemake(workflow, "-n", "table5")
    assert result.returncode != 0 and "miniimagenet: {source: PATH}" in result.stdout + result.stderr
    jobs = planned(snakemake(workflow, "-n", "table5", "--config",
                             f"miniimagenet={{source: {workflow}}}"))
    assert jobs["train_dmaml"] == 2 * 6 * 3


@pytest.mark.parametrize("override, message", [
    ("train={alpha: -1}", "experiments.table1: alpha: must be a positive number, got -1"),
    ("train={steps: many}", "On instance['train']['steps']"),
    ("experiments={table2: {alpah: 0.1}}", "experiments.table2: unknown key(s) ['alpah']"),
    ("train={engine: gpu}", "'gpu' is not one of"),
    ("omniglott={source: /x}", "unknown top-level key(s) ['omniglott']; known keys are ["),
    ("train_thread=2", "unknown top-level key(s) ['train_thread']"),
    ("experiments={table2: {ways: many}}",
     "experiments.table2: ways: must be an integer or a list of integers, got 'many'"),
    ("experiments={fig7: {alpha: 0.1}}",
     "experiments.fig7: ['alpha'] would not reach the runs of `from: table2`"),
    ("experiments={fig7: {also: [fig8]}}", "experiments.fig7: 'fig8' is not an experiment"),
])
def test_a_wrong_setting_stops_before_any_job(workflow, override, message):
    result = snakemake(workflow, "-n", "table2", "--config", override)
    assert result.returncode != 0 and "Job stats" not in result.stdout
    assert message in result.stdout + result.stderr


def test_titles_stay_text(workflow):
    """A title such as "Table 2: ..." is YAML for a mapping: it must reach the table as text."""
    for config, title in (((), "Table 2: Omniglot 5-way 1-shot, test accuracy"),
                          (("--config", "experiments={table2: {title: 'Table 2: t = 4'}}"),
                           "Table 2: t = 4")):
        result = snakemake(workflow, "-n", "-p", "table2", *config)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"--title '{title}'" in result.stdout


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    """Table 2 and Figure 3 of the quick preset, then: nothing to redo; Figure 7 and Table 7 on
    Table 2's runs (check_figure7); a new alpha for Table 2
    re-runs exactly its trainings; a plotting change re-runs no training."""
    flow = copy_workflow(tmp_path / "flow")
    real = (OMNIGLOT_DATA / "images_background.zip").is_file()
    source = OMNIGLOT_DATA if real else make_omniglot_source(tmp_path / "source", 12, 8)
    config = ["--configfile", "presets/quick.yaml", "--config", f"omniglot={{source: {source}}}"]
    done = snakemake(flow, "table2", "fig3", *config, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]

    table = pd.read_csv(flow / "results/tables/table2.csv")
    assert sorted(set(table["workers"])) == [1, 2, 4] and sorted(set(table["step"])) == [50, 100, 200]
    assert set(table["tasks"]) == {200} and table["ci95"].between(0, 0.2).all()
    if real:
        final = table[table["step"] == 200]
        assert (final["mean"] > 0.4).all(), final  # chance: 0.2
    assert "| n (seed) | step 50 | step 100 | step 200 |" in (flow / "results/tables/table2.md").read_text()
    for suffix in ("png", "pdf", "txt"):
        assert (flow / f"results/figures/fig3.{suffix}").stat().st_size > 0
    assert list((flow / "logs/train_dmaml/table2").rglob("*.log"))

    assert "Nothing to be done" in snakemake(flow, "-n", "table2", "fig3", *config).stdout
    check_figure7(flow, config)
    done = snakemake(flow, "reproduction", *config)  # the preset's tables beside the paper's
    assert done.returncode == 0, done.stderr[-4000:]
    assert "paper" in (flow / "results/tables/table2.md").read_text()
    assert (flow / "results/tables/reproduction.md").stat().st_size > 0
    jobs = planned(snakemake(flow, "-n", "table2", "fig3", *config, "--config",
                             "experiments={table2: {alpha: 0.3}}"))
    assert jobs["train_dmaml"] == 6
    figures = flow / "src/dmaml/report/figures.py"
    figures.write_text(figures.read_text().replace('"font.size": 10', '"font.size": 11'))
    jobs = planned(snakemake(flow, "-n", "table2", "fig3", *config))
    assert "train_dmaml" not in jobs and jobs["plot_figure"] == 1
    # code that cannot change a run's numbers re-runs no training; the algorithm's code does
    for module in ("costs/bench.py", "cli.py"):
        with open(flow / "src/dmaml" / module, "a") as f:
            f.write("# an edit\n")
    assert "train_dmaml" not in planned(snakemake(flow, "-n", "table2", "fig3", *config))
    # fewer test tasks: the finished runs are re-tested, and table, caption and runs agree
    fewer = [*config, "train={test_tasks: 100}"]
    done = snakemake(flow, "table2", *fewer, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "re-testing step 50 on 100 tasks" in done.stderr  # progress reaches the terminal
    assert set(pd.read_csv(flow / "results/tables/table2.csv")["tasks"]) == {100}
    assert "over 100 test tasks" in (flow / "results/tables/table2.md").read_text()
    for run in (flow / "results/runs/table2").glob("*-mean-mean/*/run.json"):  # not fig7's merges
        assert set(pd.read_csv(run.parent / "test.csv")["tasks"]) == {100}
        assert "test_tasks: 100" in (run.parent / "config.yaml").read_text()
    with open(flow / "src/dmaml/maml.py", "a") as f:
        f.write("# an edit\n")
    assert planned(snakemake(flow, "-n", "table2", "fig3", *config))["train_dmaml"] == 6


def check_figure7(flow: Path, config: list[str]) -> None:
    """The quick preset's Figure 7 and Table 7: Table 2's runs of n = 1 and 4 reused (3 new
    trainings), a row and a line per strategy, each cell the test score of its run."""
    assert planned(snakemake(flow, "-n", "fig7", "table7", *config))["train_dmaml"] == 3
    done = snakemake(flow, "fig7", "table7", *config, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    strategies = {"mean", "weighted T=1.0", "drop_worst 0.25", "mean; n=2 from step 100"}
    table = pd.read_csv(flow / "results/tables/table7.csv")
    assert set(table["strategy"]) == strategies and set(table["verdict"]) == {"-"}
    assert sorted(set(table["workers"])) == [1, 4] and len(table) == 5 * 3
    text = (flow / "results/tables/table7.md").read_text()
    assert "| strategy, n (seed) | step 50 | step 100 | step 200 |" in text
    assert "| paper |" not in text  # the paper has no Table 7: no rows of its values
    assert "The paper has no value for any cell of this table: nothing is compared." in text
    runs = tables.load_runs([r.parent for r in (flow / "results/runs").rglob("run.json")])
    for _, row in table.iterrows():
        run = runs[(runs["strategy"] == row["strategy"]) & (runs["workers"] == row["workers"])
                   & (runs["seed"] == row["seed"])]["run"].item()
        test = pd.read_csv(Path(run) / "test.csv").set_index("step").loc[row["step"]]
        assert tables.round_to_ci(test["mean"], test["ci95"]) == pytest.approx((row["mean"], row["ci95"]))
    schedule = pd.read_csv(next((flow / "results/runs/fig7_schedule").rglob("metrics.csv")))
    assert set(schedule[schedule["step"] <= 100]["workers"]) == {4}
    assert set(schedule[schedule["step"] > 100]["workers"]) == {2}
    caption = (flow / "results/figures/fig7.txt").read_text()
    assert "n = 4, t = 8, m = 1, 200 MAML steps; strategies: 'drop_worst 0.25', 'mean', " \
           "'mean; n=2 from step 100', 'weighted T=1.0'" in caption
    assert caption.count("This figure cannot answer its question: ") == 1
    assert (flow / "results/figures/fig7.png").stat().st_size > 0


SMALL_TABLE1 = ["--config", "train={steps: 600, eval_every: 20, val_tasks: 5, test_tasks: 50}",
                "experiments={table1: {workers: [1, 2], seeds: [0, 1], test_shots: [5]}}"]


@pytest.mark.slow
def test_interrupted_workflow_finishes_with_the_same_table(tmp_path):
    """Snakemake stopped (SIGINT) mid-training, then the same command with --rerun-incomplete:
    the table equals an uninterrupted run's and no finished training runs again."""
    whole = copy_workflow(tmp_path / "whole")
    done = snakemake(whole, "table1", *SMALL_TABLE1)
    assert done.returncode == 0, done.stderr[-3000:]

    flow = copy_workflow(tmp_path / "flow")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", "table1",
                             *SMALL_TABLE1], cwd=flow, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=default_sigint)
    runs = flow / "results/runs/table1"
    deadline = time.time() + 300
    finished = []
    while time.time() < deadline:
        states = {p.parent: json.loads(p.read_text())["status"] for p in runs.rglob("run.json")}
        finished = [r for r, s in states.items() if s == "finished"]
        if finished and any(s == "running" and (r / "checkpoints/latest.npz").exists()
                            for r, s in states.items()):
            break
        time.sleep(0.2)
    else:
        pytest.fail("no moment with one run finished and another under way")
    stamps = {r: (r / "run.json").stat().st_mtime_ns for r in finished}
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert not (flow / "results/tables/table1.csv").exists()

    again = snakemake(flow, "table1", *SMALL_TABLE1, "--rerun-incomplete")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {r: (r / "run.json").stat().st_mtime_ns for r in finished} == stamps
    resumed = [p for p in (flow / "logs/train_dmaml").rglob("*.log") if "resuming" in p.read_text()]
    assert resumed, "the interrupted training resumes from its checkpoint"
    assert (flow / "results/tables/table1.csv").read_text() == (
        whole / "results/tables/table1.csv").read_text()


def test_a_mistyped_key_names_the_file_it_came_from(workflow, tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("train:\n  setps: 100\n")
    result = snakemake(workflow, "-n", "table2", "--configfile", "presets/quick.yaml", str(preset))
    assert result.returncode != 0
    assert f"{preset}, train: unknown key(s) ['setps']" in result.stdout + result.stderr


def test_tasks_the_dataset_cannot_serve_stop_the_dry_run(tmp_path, tiny_omniglot_h5):
    """Once the dataset file exists, `ways: 5000` stops `snakemake -n`, not the job."""
    flow = copy_workflow(tmp_path / "flow")
    (flow / "resources").mkdir()
    shutil.copy(tiny_omniglot_h5, flow / "resources/omniglot.h5")
    result = snakemake(flow, "-n", "table2", "--config", "experiments={table2: {ways: 5000}}")
    assert result.returncode != 0 and "Job stats" not in result.stdout
    assert ("experiments.table2: resources/omniglot.h5: split 'train' has 20 classes, fewer than "
            "ways=5000; lower `ways`") in result.stdout + result.stderr
    assert planned(snakemake(flow, "-n", "table2", "--config", "experiments={table2: {ways: 5}}"))
