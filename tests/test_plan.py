"""Tests of dmaml.costs.plan and the modules behind it (runs, measured, from_bench): the runs it
plans are those the workflow trains, its cost arithmetic, the measured-costs cache and its errors.
No timing is asserted (the machine is shared)."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest

from dmaml import cli
from dmaml.costs import bench_measure, flops, from_bench, measured, plan, runs

from .conftest import ROOT
from .test_workflow import copy_workflow, planned, snakemake

QUICK = [ROOT / "presets" / "quick.yaml"]


def fixed_costs(config: dict, targets: list[str], cores: int, **cost) -> dict[str, dict]:
    """The same costs for every workload of the targets' runs."""
    costs = {'"startup"': dict(workload="startup", seconds=2.0)}
    for experiments in runs.experiments_of(config, targets).values():
        for e in experiments:
            for run in runs.runs_of(config, e, cores):
                key = runs.workload(run)
                costs[json.dumps(key, sort_keys=True)] = dict(workload=key, **cost)
    return costs


@pytest.mark.parametrize("targets", [["table2", "fig3"], ["fig7"], ["table1", "fig5", "fig6"]])
def test_runs_and_steps_are_what_the_workflow_trains(tmp_path, targets):
    flow = copy_workflow(tmp_path / "flow")
    dry = snakemake(flow, "-n", "-p", *targets, "--configfile", "presets/quick.yaml")
    commands = [line for line in dry.stdout.splitlines() if "dmaml.cli train" in line]
    config = runs.load_config(flow, [flow / "presets" / "quick.yaml"])
    total = plan.plan(config, targets, 2, fixed_costs(config, targets, 2, step_s=0.1,
                      compile_s=1.0, task_s=0.01, eval_compile_s=1.0))[-1]
    assert total.target == "total"
    assert total.runs == planned(dry)["train_dmaml"] == len(commands)
    assert total.steps == sum(int(re.search(r"--steps (\d+)", c)[1]) for c in commands)


def test_cost_arithmetic_of_the_quick_preset():
    config = runs.load_config(ROOT, QUICK)
    costs = fixed_costs(config, ["table2"], 2, step_s=0.1, compile_s=10.0, task_s=0.01,
                        eval_compile_s=5.0)
    rows = plan.plan(config, ["table2", "fig3"], 2, costs)
    # n = 1 and 2: startup 2 + compile 10 + 2 x 5 (validation and test batches) + 200 steps x
    # 0.1 + (10 validations x 20 + 3 tests x 200 tasks) x 0.01 = 50 s; n = 4 on 2 threads:
    # its steps take twice as long, 70 s. Two seeds each.
    assert [(r.target, r.runs, r.shared, r.steps) for r in rows] == [
        ("table2", 6, 0, 1200), ("fig3", 6, 6, 1200), ("total", 6, 0, 1200)]
    total = rows[-1]
    assert total.core_s == pytest.approx(2 * (50 * 1 + 50 * 2 + 70 * 2))
    # 2 cores: the n = 4 runs one after the other, then n = 2, then both n = 1 side by side
    assert total.wall_s == pytest.approx(70 + 70 + 50 + 50 + 50)
    assert "| total | 6 | 1200 | 22400 | 0.16 | 4m50s |" in plan.table(rows, 2)


def test_wall_time_packs_jobs_onto_the_cores():
    assert plan.wall_seconds([(10, 1), (10, 1), (10, 1)], 2) == 20
    assert plan.wall_seconds([(30, 2), (10, 1), (10, 1)], 2) == 40
    assert plan.wall_seconds([(30, 1), (10, 1), (10, 1), (10, 1)], 2) == 30


def test_costs_from_a_bench_file(tmp_path):
    config = runs.load_config(ROOT, QUICK)
    table2 = runs.runs_of(config, "table2", 4)
    keys = [runs.workload(r) for r in table2]
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"kind": "matmul_peak", "gflops": 199.0, "cores": 2},
        dict(workload="omniglot-5w1s", order="second", n=1, engine="vectorized", median_s=0.32,
             first_run_s=10.32),
        dict(workload="omniglot-5w1s", order="second", n=4, engine="vectorized", median_s=0.8,
             first_run_s=12.8),
    ]) + "\n")
    costs = from_bench.bench_costs(keys, path)
    one = costs[json.dumps(runs.workload(table2[0]), sort_keys=True)]
    # 0.32 s on 2 cores for 1 worker x 32 tasks: 0.02 core-s a task; the run's t = 8 tasks of
    # 1 worker on 1 thread
    assert one["step_s"] == pytest.approx(0.16) and one["compile_s"] == pytest.approx(10.0)
    assert 0 < one["task_s"] < 0.02  # an evaluated task does less than a trained one
    def step_s(n):
        return costs[json.dumps(next(runs.workload(r) for r in table2 if r.cfg.workers == n),
                                sort_keys=True)]["step_s"]

    assert step_s(2) == pytest.approx(0.02 * 2 * 8 / 2)  # from the nearest n, 1; 2 threads
    assert step_s(4) == pytest.approx(0.8 * 2 / (4 * 32) * 4 * 8 / 4)
    # Table 3's 5-shot tasks: the 1-shot record's seconds per FLOP
    five = runs.runs_of(config, "table3", 4)[0]
    key = runs.workload(five)
    cost = from_bench.bench_costs([key], path)[json.dumps(key, sort_keys=True)]
    ratio = flops.flops_per_step(five.cfg) / flops.flops_per_step(table2[0].cfg)
    assert cost["step_s"] == pytest.approx(0.16 * ratio)


def test_a_second_plan_reads_the_cache(tmp_path, capsys):
    cache = tmp_path / "costs.jsonl"
    config = runs.load_config(ROOT, QUICK)
    costs = fixed_costs(config, ["table2"], 2, step_s=0.1, compile_s=1.0, task_s=0.01,
                        eval_compile_s=1.0)
    cache.write_text("".join(json.dumps(dict(c, machine=measured.machine(),
                                             timing=measured.TIMING)) + "\n"
                             for c in costs.values()))
    before = cache.read_text()
    assert cli.main(["plan", "table2", "--directory", str(ROOT), "--cores", "2", "--cache",
                     str(cache), "--configfile", str(QUICK[0])]) == 0
    assert cache.read_text() == before  # nothing measured
    assert "| table2 | 6 | 1200 |" in capsys.readouterr().out


@pytest.mark.slow  # compiles and times MAML steps in a fresh process
def test_costs_measured_on_the_spot(tmp_path):
    config = runs.load_config(ROOT, [])
    run = runs.runs_of(config, "table1", 1)[0]
    costs = measured.measured_costs([runs.workload(run)], tmp_path / "costs.jsonl")
    cost = costs[json.dumps(runs.workload(run), sort_keys=True)]
    assert cost["step_s"] > 0 and cost["task_s"] > 0 and costs['"startup"']["seconds"] > 0
    assert len((tmp_path / "costs.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("argv, message", [
    (["--configfile", "missing.yaml"], "configfile missing.yaml: no such file"),
    (["--configfile", "BAD"], "configfile BAD: must be a mapping of keys"),
    (["--configfile", "TYPO"], "unknown top-level key(s) ['omniglott']"),
    (["--configfile", "WRONG"], "experiments.table2: unknown key(s) ['alpah']"),
    (["table9"], "unknown target 'table9'; targets are the experiments ["),
    (["--costs", "EMPTY"], "no measurement of sine, second order"),
])
def test_bad_input_is_a_clear_error(tmp_path, caplog, argv, message):
    files = {"BAD": "- a list\n", "TYPO": "omniglott: {source: /x}\n",
             "WRONG": "experiments: {table2: {alpah: 0.1}}\n", "EMPTY": "\n"}
    argv = [str(tmp_path / a) if a in files else a for a in argv]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    # (a later --costs replaces "none")
    assert cli.main(["plan", "--directory", str(ROOT), "--costs", "none", *argv]) == 2
    assert message.replace("BAD", str(tmp_path / "BAD")) in caplog.text


def test_the_cli_plans_from_a_bench_file(tmp_path, capsys):
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps(dict(workload="omniglot-5w1s", order="second", n=1,
                                    engine="vectorized", median_s=0.32, first_run_s=10.32)) + "\n")
    assert cli.main(["plan", "table2", "fig3", "--directory", str(ROOT), "--cores", "2",
                     "--costs", str(path), "--configfile", str(QUICK[0])]) == 0
    out = capsys.readouterr().out
    assert "| fig3 | 6 (6 shared) | 1200 |" in out and f"costs from {path}" in out


def test_cores_zero_is_refused(caplog):
    assert cli.main(["plan", "table2", "--directory", str(ROOT), "--cores", "0"]) == 2
    assert "--cores must be at least 1, got 0" in caplog.text


def test_yaml_and_key_errors_name_the_file_and_line(tmp_path, caplog):
    """Of two files, the one at fault: its line for a syntax error, its name for a typo."""
    good, bad, typo = tmp_path / "good.yaml", tmp_path / "bad.yaml", tmp_path / "typo.yaml"
    good.write_text("train:\n  steps: 100\n")
    bad.write_text("train:\n  steps: 100\n  seeds: [0\nomniglot: {}\n")
    typo.write_text("train:\n  setps: 100\n")
    assert cli.main(["plan", "--directory", str(ROOT), "--configfile", str(good), str(bad)]) == 2
    assert f"configfile {bad}, line 4, column 9: not valid YAML" in caplog.text
    assert cli.main(["plan", "--directory", str(ROOT), "--configfile", str(typo), str(good)]) == 2
    assert f"{typo}, train: unknown key(s) ['setps']" in caplog.text


def test_a_wrong_value_names_the_file_that_set_it(tmp_path, caplog):
    """A wrong type or value from a --configfile is blamed on that file, not config.yaml; a
    --configfile that does not exist is one line naming it (and the targets-after-it trap)."""
    mine = tmp_path / "my.yaml"
    plan = ["plan", "table2", "--directory", str(ROOT), "--costs", "none", "--configfile"]
    for text, message in [
        ('experiments:\n  table2:\n    workers: "four"\n',
         "experiments.table2: workers: must be an integer or a list of integers, got 'four'"),
        ("train:\n  alpha: -1\n", "experiments.table1: alpha: must be a positive number, got -1"),
        ("experiments:\n  fig7:\n    also: [fig8]\n", "experiments.fig7: 'fig8' is not an experiment"),
    ]:
        mine.write_text(text)
        caplog.clear()
        assert cli.main([*plan, str(QUICK[0]), str(mine)]) == 2
        assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][0].startswith(
            f"{mine}, {message}")
    caplog.clear()
    assert cli.main([*plan, str(tmp_path / "none.yaml"), "fig3"]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"configfile {tmp_path / 'none.yaml'}: no such file; give --configfile existing files "
        "(it takes every word after it: put targets before it)"]


@pytest.mark.slow  # measures a workload: a training process of about a minute
def test_a_first_plan_measures_one_workload_and_scales_the_shipped_benchmark(tmp_path, caplog):
    """The quick preset's Table 2 (omniglot 5-way 1-shot, measured by the shipped benchmark):
    one workload measured here with progress, the others from the benchmark scaled to it."""
    config = runs.load_config(ROOT, QUICK)
    keys = list({json.dumps(runs.workload(r), sort_keys=True): runs.workload(r)
                 for r in runs.runs_of(config, "table2", 2)}.values())
    cache = tmp_path / "costs.jsonl"
    with caplog.at_level(logging.INFO, logger="dmaml"):
        costs = measured.measured_costs(keys, cache, ROOT)
    assert f"{len(keys)} workload(s) to cost: 1 measured here, {len(keys) - 1} from" in caplog.text
    assert "measuring workload 1 of 1 on this machine (omniglot 5-way 1-shot, t=8" in caplog.text
    assert "corrected for the cores other processes took" in caplog.text
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    sources = [r.get("source") for r in records if r["workload"] != "startup"]
    assert sources.count("measured here") == 1 and len(sources) == len(keys) > 1
    assert all(s.startswith("benchmarks/bench-") for s in sources if s != "measured here")
    assert all(costs[json.dumps(k, sort_keys=True)]["step_s"] > 0 for k in keys)
    assert measured.measured_costs(keys, cache, ROOT) == costs  # a second plan: nothing measured


@pytest.mark.parametrize("wall, cpu, waited, parallelism, idle", [
    (1.0, 1.0, 0.0, 1, 1.0),  # one thread, alone: its wall time
    (2.0, 1.0, 1.0, 1, 1.0),  # one thread that waited half the time for a core
    (2.0, 2.0, 2.0, 1, 1.0),  # two threads, each runnable throughout, each ran half of it
    (2.0, 1.5, 0.5, 1, 1.5),  # one thread and a second for half: 1.5 s on an idle machine
    (3.0, 1.0, 1.0, 1, 2.0),  # one thread that also blocked (read a file) for 1 s: kept
    (1.0, 0.25, None, 1, 0.25),  # waits unknown: the CPU time of one thread
    (1.0, 1.0, None, 2, 0.5),  # ... of two threads that would both run
    (1.0, 3.0, None, 2, 1.0),  # never more than the wall time
])
def test_idle_seconds_correct_the_wall_time_for_the_cores_other_processes_took(
        wall, cpu, waited, parallelism, idle):
    """Proportional slowdown: a section whose runnable threads got a fraction f of the cores they
    wanted took wall = idle / f; wall * cpu / (cpu + waited) undoes it whatever its threads."""
    assert bench_measure.idle_seconds(wall, cpu, waited, parallelism) == pytest.approx(idle)


def test_a_clock_times_a_section_and_its_cpu():
    with bench_measure.Clock() as clock:
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass
    assert clock.wall_s >= clock.idle_s >= 0.18 and clock.cpu_s >= 0.19
    assert clock.waited_s is None or clock.waited_s >= 0


def test_the_plan_says_the_load_its_costs_were_measured_at():
    costs = [dict(source="measured here", load=3.71), dict(source="bench x 1.10")]
    assert plan.sources(costs, "here") == (
        "costs of 1 workload from bench x 1.10 (scaled by the speed measured here), 1 workload "
        "measured on here at load 3.7 (one-minute average), corrected to an idle machine")

