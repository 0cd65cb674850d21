"""``dmaml plan``: what a workflow configuration will cost, before it starts.

Per table and figure (Snakemake target): its training runs, MAML steps, tasks, estimated
core-hours and wall time on ``--cores`` cores, and the total over distinct runs (Figure 3 reuses
Table 2's runs: they are counted once). The runs are those the workflow makes
(:mod:`dmaml.costs.runs`); the cost of each run's workload is measured on this machine and cached
(:mod:`dmaml.costs.measured`), or taken from a ``dmaml bench`` JSON-lines file given with
``--costs`` (:mod:`dmaml.costs.from_bench`: seconds per task of the nearest measured n, scaled to
the run's t and n, evaluation from the FLOP ratio of an evaluated to a trained task).

One run costs ``startup + compile + steps * step_s + (validations * val_tasks + tests *
test_tasks) * task_s``, validations at every ``eval_every`` steps reached (and the last), tests at
each checkpoint step. Its core-seconds are that times its threads; the wall time packs the jobs,
longest first, onto the cores as Snakemake's scheduler does (a job waits for free cores). Data
preparation and the report jobs (seconds each) are not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
from pathlib import Path

from dmaml.clock import duration
from dmaml.costs.from_bench import bench_costs
from dmaml.costs.measured import machine, measured_costs
from dmaml.costs.runs import Run, experiments_of, load_config, runs_of, workload
from dmaml.errors import ConfigError


def run_seconds(run: Run, cost: dict, startup: float) -> float:
    """Wall seconds of one training job (see the module docstring)."""
    c = run.cfg
    reached = range(c.steps_per_run, c.steps + 1, c.steps_per_run)
    validations = sum(1 for k in reached if k % c.eval_every == 0 or k == c.steps)
    tests = sum(1 for k in c.checkpoint_steps if k in reached) if c.test_tasks else 0
    scale = c.workers / min(c.workers, run.threads)
    return (startup + cost["compile_s"] + cost["eval_compile_s"] * (1 + (tests > 0))
            + c.steps * cost["step_s"] * scale
            + (validations * c.val_tasks + tests * c.test_tasks) * cost["task_s"])


def wall_seconds(jobs: list[tuple[float, int]], cores: int) -> float:
    """Seconds until ``jobs`` (seconds, threads) finish on ``cores`` cores, longest first, each
    started as soon as its threads are free."""
    running: list[tuple[float, int]] = []
    now, free = 0.0, cores
    for seconds, threads in sorted(jobs, reverse=True):
        while free < threads:
            now, released = heapq.heappop(running)
            free += released
        heapq.heappush(running, (now + seconds, threads))
        free -= threads
    return max([now, *(end for end, _ in running)])


@dataclasses.dataclass
class Row:
    """One line of the plan."""

    target: str
    runs: int
    steps: int
    tasks: int
    core_s: float
    wall_s: float
    shared: int = 0  # runs already counted by an earlier target


def plan(config: dict, targets: list[str], cores: int, costs: dict[str, dict]) -> list[Row]:
    """Rows per target and a total over distinct runs, from ``costs`` of every workload."""
    startup = costs['"startup"']["seconds"]
    seconds = {}
    rows = []
    for target, experiments in experiments_of(config, targets).items():
        runs = [r for e in experiments for r in runs_of(config, e, cores)]
        jobs = []
        for r in runs:
            cost = costs[json.dumps(workload(r), sort_keys=True)]
            jobs.append((run_seconds(r, cost, startup), r.threads))
        rows.append(Row(target, len(runs), sum(r.cfg.steps for r in runs),
                        sum(r.cfg.steps * r.cfg.workers * r.cfg.tasks_per_step for r in runs),
                        sum(s * t for s, t in jobs), wall_seconds(jobs, cores),
                        sum(r.name in seconds for r in runs)))
        for r, job in zip(runs, jobs):
            seconds.setdefault(r.name, (r, job))
    distinct = list(seconds.values())
    rows.append(Row("total", len(distinct), sum(r.cfg.steps for r, _ in distinct),
                    sum(r.cfg.steps * r.cfg.workers * r.cfg.tasks_per_step for r, _ in distinct),
                    sum(s * t for _, (s, t) in distinct),
                    wall_seconds([job for _, job in distinct], cores)))
    return rows


def table(rows: list[Row], cores: int) -> str:
    """The plan as a Markdown table."""
    lines = [f"| target | runs | MAML steps | tasks | core-hours | wall on {cores} cores |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        shared = f" ({r.shared} shared)" if r.shared else ""
        lines.append(f"| {r.target} | {r.runs}{shared} | {r.steps} | {r.tasks} | "
                     f"{r.core_s / 3600:.2f} | {duration(r.wall_s)} |")
    return "\n".join(lines)


def sources(costs: list[dict], here: str) -> str:
    """Where the costs of a plan came from, in words."""
    counts: dict[str, int] = {}
    for cost in costs:
        source = cost.get("source", "measured here")
        counts[source] = counts.get(source, 0) + 1
    loads = [c["load"] for c in costs if "load" in c and c.get("source") == "measured here"]
    load = (f" at load {max(loads):.1f} (one-minute average), corrected to an idle machine"
            if loads else "")
    words = {"measured here": f"measured on {here}{load}"}
    return "costs of " + ", ".join(
        f"{n} workload{'s' if n > 1 else ''} "
        + words.get(source, f"from {source} (scaled by the speed measured here)")
        for source, n in sorted(counts.items()))


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``dmaml plan``."""
    p = subparsers.add_parser(
        "plan", help="runs, MAML steps, core-hours and wall time of a workflow configuration",
        description="Estimate what `snakemake TARGETS --configfile FILES` will train and how long "
                    "it takes, from per-step costs measured on this machine (cached) or taken "
                    "from a `dmaml bench --out` file.")
    p.add_argument("targets", nargs="*", help="tables and figures (table2, fig3, fig3_wall, "
                   "reproduction, figures, all) [default: all]")
    p.add_argument("--configfile", type=Path, nargs="+", action="extend", default=[],
                   help="files merged over config.yaml in order, as Snakemake's --configfile")
    p.add_argument("--directory", type=Path, default=Path("."),
                   help="the workflow folder (its config.yaml and schema) [default: .]")
    p.add_argument("--cores", type=int, help="cores of the run [default: this machine's]")
    p.add_argument("--costs", type=Path, help="a `dmaml bench --out` JSON-lines file instead of "
                   "measuring")
    p.add_argument("--measure", action="store_true",
                   help="measure every workload on this machine (about half a minute each, "
                        "cached) instead of scaling the shipped benchmarks' costs to it")
    p.add_argument("--cache", type=Path, help="measured costs of this machine "
                   "[default: DIRECTORY/resources/plan-costs.jsonl]")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan of the configuration and targets."""
    from dmaml.engines import cores as available

    cores = available() if args.cores is None else args.cores
    if cores < 1:
        raise ConfigError(f"dmaml plan: --cores must be at least 1, got {cores}")
    config = load_config(args.directory, args.configfile)
    chosen = experiments_of(config, args.targets)
    keys = {json.dumps(workload(r), sort_keys=True): workload(r)
            for experiments in chosen.values() for e in experiments
            for r in runs_of(config, e, cores)}
    costs = (bench_costs(list(keys.values()), args.costs) if args.costs else
             measured_costs(list(keys.values()),
                            args.cache or args.directory / "resources" / "plan-costs.jsonl",
                            args.directory, args.measure))
    rows = plan(config, args.targets, cores, costs)
    source = f"costs from {args.costs}" if args.costs else sources(
        [costs[k] for k in keys], machine())
    print(f"{table(rows, cores)}\n\n{source}; wall time: jobs packed onto {cores} cores, "
          "data preparation and report jobs not counted")
    return 0

