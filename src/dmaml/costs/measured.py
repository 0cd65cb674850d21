"""Costs of ``dmaml plan``'s workloads measured on this machine, cached.

A run's estimate is measured, not guessed. Per distinct workload
(:func:`dmaml.costs.runs.workload`: dataset, ways, shots, queries, inner steps, order, t, n,
engine and the threads Snakemake gives the job) one fresh process makes a few compiled MAML steps
on synthetic data of the real shapes (``dmaml bench``'s measurement,
:func:`dmaml.costs.bench_measure.measure`: seconds per step as training sees them) and evaluates a few
validation tasks; the first step's and the first evaluation's extra seconds are its compilation,
counted once per run (twice for evaluation with tests: the validation and the test batches
compile apart). Each is timed as an idle machine would take it, whatever else shares the cores
(:func:`dmaml.costs.bench_measure.idle_seconds`: the wall time scaled by the share of the cores
the process got, from its CPU time and its threads' waits for a core); the load it was measured
at is said. Workers beyond the threads are measured at n = threads and scaled linearly. A
first plan measures few of them (about half a minute each, with a line of progress each): the
workloads of a dataset and order that the benchmarks shipped in ``benchmarks/`` (of the machine
nearest in cores) measured take their costs from them (:mod:`dmaml.costs.from_bench`), scaled by
the ratio of one such workload measured here to its benchmark estimate; ``--measure`` measures
every workload. Costs are cached (``--cache``, keyed by processor and cores), so a second plan is
instant.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

from dmaml import provenance
from dmaml.costs import bench_measure, fresh_process
from dmaml.costs.from_bench import bench_cores, benched, cost_from_bench, shipped_bench
from dmaml.engines import cores

log = logging.getLogger("dmaml")

MEASURE_STEPS = 3  # timed MAML steps per workload, after one that compiles
# How the cached costs were timed: as an idle machine would take them (measure_one). Costs cached
# before (wall times, as slow as the machine's load made them) are measured again.
TIMING = "idle estimate"
EVAL_TASKS = 32  # most evaluation tasks timed per workload


def machine() -> str:
    """This machine, as measurements are keyed: processor and cores
    (:func:`dmaml.provenance.processor`)."""
    here = provenance.processor()
    return f"{here['cpu']}, {here['cores']} cores"


def measure_one(spec: dict) -> dict:
    """In this (fresh) process: seconds per MAML step, its compilation, and seconds per
    evaluated task of one workload (``spec``: :func:`dmaml.costs.runs.workload` and synthetic
    ``data`` files), as an idle machine would take them: each timed section's wall time
    corrected for the cores that other processes took from it
    (:func:`dmaml.costs.bench_measure.idle_seconds`), so that a plan on a busy machine is not
    the busy machine's. Beside them the wall seconds per step and per task as measured, the
    share of the idle estimate in them and the load (:func:`os.getloadavg`)."""
    from dmaml import config, models
    from dmaml.engines import set_threads
    from dmaml.evaluate import Evaluator
    from dmaml.tasks import INIT, make_sampler, task_rng

    key = spec["workload"]
    set_threads(key["threads"])
    settings = {k: v for k, v in key.items() if k not in ("workers", "first_order", "engine")}
    record = bench_measure.measure(dict(workload="plan", settings=settings, n=key["workers"],
                                engine=key["engine"], order="first" if key["first_order"]
                                else "second", steps=MEASURE_STEPS, warmup=1, budget=0,
                                processes=None, data=spec["data"]))
    cfg = config.load(None, {**settings, "data": spec["data"].get(key["dataset"])})
    model = models.for_config(cfg)
    evaluator = Evaluator(model, make_sampler(cfg, "val"), "val", EVAL_TASKS, cfg.eval_seed,
                          cfg.alpha, cfg.eval_inner_steps)
    theta = model.init(task_rng(cfg.seed, INIT))
    clocks = []
    for _ in range(2):
        with bench_measure.Clock(parallelism=key["threads"]) as clock:
            evaluator(theta)
        clocks.append(clock)
    first, again = (c.idle_s for c in clocks)
    return dict(workload=key, step_s=record["idle_median_s"],
                compile_s=max(record["idle_first_run_s"] - record["idle_median_s"], 0.0),
                task_s=again / EVAL_TASKS, eval_compile_s=max(first - again, 0.0),
                wall_step_s=record["median_s"], wall_task_s=clocks[1].wall_s / EVAL_TASKS,
                share=record["share"], load=max(record["load"], bench_measure.load()),
                waits_known=record["waits_known"], idle_steps_s=record["idle_s"],
                wall_steps_s=record["wall_s"])


# A fresh process timing its own imports (before any of them: the times of its threads waiting
# for a core, from /proc, and its CPU time), as an idle machine would take them.
_STARTUP = """
import os, time
def waited():
    try:
        return sum(int(open(f"/proc/self/task/{t}/schedstat").read().split()[1])
                   for t in os.listdir("/proc/self/task")) / 1e9
    except (OSError, IndexError, ValueError):
        return None
w, c, t = waited(), time.process_time(), time.perf_counter()
import dmaml.learner
t, c, w2 = time.perf_counter() - t, time.process_time() - c, waited()
from dmaml.costs.bench_measure import idle_seconds
print(idle_seconds(t, c, None if w is None or w2 is None else w2 - w), t)
"""


def startup_s() -> float:
    """Seconds a training job's process takes to start and import its modules on an idle
    machine (:func:`dmaml.costs.bench_measure.idle_seconds`: the child times its own imports;
    its interpreter's start, some 20 ms, is not counted)."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _STARTUP], check=True, capture_output=True,
                          text=True)
    return float(done.stdout.split()[-2])


def measure_workloads(keys: list[dict | None], data: dict, here: str, out) -> list[dict]:
    """Measure each workload of ``keys`` (None: the start-up) in a fresh process, saying how far
    it is; each record is appended to the open cache file ``out``."""
    records = []
    workloads = [k for k in keys if k is not None]
    for key in keys:
        if key is None:
            log.info("plan: timing the start-up of a training process")
            record = dict(workload="startup", seconds=startup_s())
        else:
            log.info("plan: measuring workload %d of %d on this machine (%s %d-way %d-shot, t=%d, "
                     "n=%d, %s order; about half a minute each)", workloads.index(key) + 1,
                     len(workloads), key["dataset"],
                     key["ways"], key["shots"], key["tasks_per_step"], key["workers"],
                     "first" if key["first_order"] else "second")
            try:
                record = fresh_process.run("dmaml.costs.measured", dict(workload=key, data=data))
            except fresh_process.Failed as e:
                raise RuntimeError(f"measuring {key} failed:\n{e.stderr[-2000:]}") from None
            record = dict(record, source="measured here")
            log.info("plan: %.3f s a step as an idle machine would take it (measured %.3f s at "
                     "load %.1f on %d cores: corrected for the cores other processes took%s)",
                     record["step_s"], record["wall_step_s"], record["load"], cores(),
                     "" if record["waits_known"] else
                     ", from the CPU time only: this kernel does not report waits for a core")
        record.update(machine=here, timing=TIMING)
        out.write(json.dumps(record) + "\n")
        out.flush()
        records.append(record)
    return records


def measured_costs(keys: list[dict], cache: Path, folder: Path | None = None,
                   measure_all: bool = False) -> dict[str, dict]:
    """Costs of each workload (by its JSON key), from ``cache`` where this machine measured or
    estimated it before; else, unless ``measure_all``, from the benchmarks shipped in
    ``folder`` (:func:`shipped_bench`) for the datasets and orders they measured, scaled by this
    machine's speed (one of them measured here); the others measured now, each in a fresh
    process. What is found is added to the cache, so that a second plan is instant."""
    here = machine()
    known = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            if r.get("machine") == here and r.get("timing") == TIMING and (
                    not measure_all or r.get("source", "measured here") == "measured here"):
                known[json.dumps(r.get("workload"), sort_keys=True)] = r
    todo = [k for k in keys if json.dumps(k, sort_keys=True) not in known]
    name, records = shipped_bench(folder) if folder is not None and not measure_all else ("", [])
    cores = bench_cores(records)
    shipped = {json.dumps(k, sort_keys=True): c for k in todo
               if (c := cost_from_bench(k, records, cores)) is not None}
    if shipped:  # this machine's speed against the benchmark's: the cheapest conv net workload
        # of a shape, t and n that the benchmark measured (elsewhere FLOPs scale imperfectly)
        ordered = sorted(shipped.values(), key=lambda c: (
            c["workload"]["dataset"] == "sine", not benched(c["workload"], records),
            c["step_s"]))
        calibration = ordered[0]["workload"]
    todo = [k for k in todo if json.dumps(k, sort_keys=True) not in shipped]
    if shipped:
        todo.insert(0, calibration)
    if '"startup"' not in known:
        todo.insert(0, None)
    if not todo:
        return known
    here_count = len([k for k in todo if k is not None])  # the calibration included
    scaled = len(shipped) - bool(shipped)
    log.info("plan: %d workload(s) to cost: %d measured here%s", here_count + scaled, here_count,
             f", {scaled} from {name} scaled by the speed of the first (--measure measures them "
             "all)" if shipped else "")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dmaml-plan-") as folder_, open(cache, "a") as out:
        data = bench_measure.make_data(Path(folder_))
        for record in measure_workloads(todo, data, here, out):
            known[json.dumps(record["workload"], sort_keys=True)] = record
        if shipped:
            own = known[json.dumps(calibration, sort_keys=True)]
            ratio = own["step_s"] / shipped[json.dumps(calibration, sort_keys=True)]["step_s"]
            for key, cost in shipped.items():
                if key in known:
                    continue
                record = dict(cost, step_s=cost["step_s"] * ratio, task_s=cost["task_s"] * ratio,
                              compile_s=own["compile_s"], eval_compile_s=own["eval_compile_s"],
                              source=f"{name} x {ratio:.2f}", machine=here, timing=TIMING)
                out.write(json.dumps(record) + "\n")
                known[key] = record
    return known


if __name__ == "__main__":
    fresh_process.answer(measure_one)
