"""``dmaml plan``: what a workflow configuration will cost, before it starts.

Per table and figure (Snakemake target): its training runs, MAML steps, tasks, estimated
core-hours and wall time on ``--cores`` cores, and the total over distinct runs (Figure 3 reuses
Table 2's runs: they are counted once). The runs come from :mod:`dmaml.grid`, the expansion the
workflow itself makes, over the configuration Snakemake reads: the workflow folder's
``config.yaml``, then each ``--configfile`` merged over it key by key, checked against
``workflow/schemas/config.schema.yaml`` with its defaults filled in.

A run's estimate is measured, not guessed. Per distinct workload (dataset, ways, shots, queries,
inner steps, order, t, n, engine and the threads Snakemake gives the job: ``min(n,
train_threads, cores)``) one fresh process makes a few compiled MAML steps on synthetic data of
the real shapes (``dmaml bench``'s measurement: seconds per step as training sees them) and
evaluates a few validation tasks; the first step's and the first evaluation's extra seconds are
its compilation, counted once per run (twice for evaluation with tests: the validation and the
test batches compile apart). Workers beyond the threads are measured at n = threads and scaled
linearly. A first plan measures few of them (about half a minute each, with a line of progress
each): the workloads of a dataset and order that the benchmarks shipped in ``benchmarks/`` (of
the machine nearest in cores) measured take their costs from them, scaled by the ratio of one
such workload measured here to its benchmark estimate; ``--measure`` measures every workload.
Costs are cached (``--cache``, keyed by processor and cores), so a second plan is instant.
``--costs`` takes a ``dmaml bench`` JSON-lines file instead: seconds per task of the nearest
measured n, scaled to the run's t and n, evaluation from the FLOP ratio of an evaluated to a
trained task.

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
import logging
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dmaml import grid, provenance
from dmaml.config import RunConfig, resolve
from dmaml.errors import ConfigError
from dmaml.status import duration

log = logging.getLogger("dmaml")

SCHEMA = grid.SCHEMA
# Targets that stand for several experiments (the Snakefile's rules of the same names).
GROUPS = {"figures": "fig", "all": ""}
MEASURE_STEPS = 3  # timed MAML steps per workload, after one that compiles
EVAL_TASKS = 32  # most evaluation tasks timed per workload


def load_config(folder: Path, configfiles: list[Path]) -> dict:
    """The workflow configuration as Snakemake reads it: ``folder/config.yaml``, then each of
    ``configfiles`` merged over it, validated with the schema's defaults filled in."""
    try:
        from snakemake.utils import update_config, validate
    except ImportError:
        raise ConfigError("dmaml plan reads the configuration as the workflow does, with "
                          "Snakemake: pip install -e '.[workflow]'") from None
    config: dict = {}
    for path in [folder / "config.yaml", *configfiles]:
        try:
            values = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"configfile {path}: cannot be read ({e.strerror}); run in the "
                              "workflow's folder or give it with --directory") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"configfile {path}{line}: not valid YAML "
                              f"({getattr(e, 'problem', None) or e}); fix that line") from None
        if not isinstance(values, dict):
            raise ConfigError(f"configfile {path}: must be a mapping of keys (config.yaml's "
                              f"layout), got {type(values).__name__}")
        update_config(config, values)
    where = ", ".join(map(str, configfiles)) or "config.yaml"
    grid.check_top_level(config, folder, f"configfile {where}")
    try:
        validate(config, str(folder / SCHEMA))
    except Exception as e:  # snakemake's WorkflowError, with jsonschema's message
        raise ConfigError(f"configfile {where}: {e}") from None
    grid.check_experiments(config, files=[folder / "config.yaml", *configfiles])
    return config


def experiments_of(config: dict, targets: list[str]) -> dict[str, list[str]]:
    """The experiments behind each target: an experiment's name (``table2``, ``fig3``,
    ``fig3_wall``), ``reproduction`` (its tables), ``figures`` or ``all`` [default]."""
    known = list(config["experiments"])
    chosen = {}
    for target in targets or ["all"]:
        name = target.removesuffix("_wall")
        if target in GROUPS:
            chosen.update({e: [e] for e in known if e.startswith(GROUPS[target])})
        elif target == "reproduction":
            chosen.update({e: [e] for e in config["reproduction"]})
        elif name in known:
            chosen[name] = [name]
        else:
            raise ConfigError(f"dmaml plan: unknown target {target!r}; targets are the "
                              f"experiments {known}, their *_wall figures, reproduction, "
                              f"{', '.join(GROUPS)}")
    return chosen


@dataclasses.dataclass(frozen=True)
class Run:
    """One training job: its folder's name and settings, and the threads it gets."""

    name: str
    cfg: RunConfig
    threads: int


def runs_of(config: dict, experiment: str, cores: int) -> list[Run]:
    """The training jobs of an experiment, as the workflow makes them."""
    jobs = []
    for w in grid.runs(config, experiment):
        cfg = resolve(RunConfig(**grid.run_settings(config, **w)))
        threads = min(cfg.workers, config["train_threads"], cores)
        jobs.append(Run(grid.RUN_ID.format(**w), dataclasses.replace(cfg, threads=threads), threads))
    return jobs


def workload(run: Run) -> dict:
    """What a run's seconds per step depend on (its measurement's cache key)."""
    c = run.cfg
    return dict(dataset=c.dataset, ways=c.ways, shots=c.shots, queries=c.queries,
                inner_steps=c.inner_steps, eval_inner_steps=c.eval_inner_steps,
                first_order=c.first_order, tasks_per_step=c.tasks_per_step,
                workers=min(c.workers, run.threads), engine=c.engine, threads=run.threads)


def machine() -> str:
    """This machine, as measurements are keyed: processor and cores
    (:func:`dmaml.provenance.processor`)."""
    here = provenance.processor()
    return f"{here['cpu']}, {here['cores']} cores"


# --- measuring ----------------------------------------------------------------------------------

def measure_one(spec: dict) -> dict:
    """In this (fresh) process: seconds per MAML step, its compilation, and seconds per
    evaluated task of one workload (``spec``: :func:`workload` and synthetic ``data`` files)."""
    from dmaml import bench, config, models
    from dmaml.engines import set_threads
    from dmaml.evaluate import Evaluator
    from dmaml.tasks import INIT, make_sampler, task_rng

    key = spec["workload"]
    set_threads(key["threads"])
    settings = {k: v for k, v in key.items() if k not in ("workers", "first_order", "engine")}
    record = bench.measure(dict(workload="plan", settings=settings, n=key["workers"],
                                engine=key["engine"], order="first" if key["first_order"]
                                else "second", steps=MEASURE_STEPS, warmup=1, budget=0,
                                processes=None, data=spec["data"]))
    cfg = config.load(None, {**settings, "data": spec["data"].get(key["dataset"])})
    model = models.for_config(cfg)
    evaluator = Evaluator(model, make_sampler(cfg, "val"), "val", EVAL_TASKS, cfg.eval_seed,
                          cfg.alpha, cfg.eval_inner_steps)
    theta = model.init(task_rng(cfg.seed, INIT))
    first, again = (bench.timed(lambda: evaluator(theta)) for _ in range(2))
    return dict(workload=key, step_s=record["median_s"],
                compile_s=max(record["first_run_s"] - record["median_s"], 0.0),
                task_s=again / EVAL_TASKS, eval_compile_s=max(first - again, 0.0))


def startup_s() -> float:
    """Seconds a training job's process takes to start and import its modules."""
    import subprocess

    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dmaml.learner"], check=True)
    return time.perf_counter() - start


def measure(keys: list[dict | None], data: dict, here: str, out) -> list[dict]:
    """Measure each workload of ``keys`` (None: the start-up) in a fresh process, saying how far
    it is; each record is appended to the open cache file ``out``."""
    import subprocess

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
            done = subprocess.run([sys.executable, "-m", "dmaml.plan", "--one",
                                   json.dumps(dict(workload=key, data=data))],
                                  capture_output=True, text=True)
            lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
            if done.returncode or not lines:
                raise RuntimeError(f"measuring {key} failed:\n{done.stderr[-2000:]}")
            record = dict(json.loads(lines[-1]), source="measured here")
        record["machine"] = here
        out.write(json.dumps(record) + "\n")
        out.flush()
        records.append(record)
    return records


def shipped_bench(folder: Path) -> tuple[str, list[dict]]:
    """The ``dmaml bench`` records shipped in ``folder/benchmarks`` of the machine nearest this
    one in cores (a benchmark's files share its date and cores: ``bench-DATE-Ncores*.jsonl``),
    and their names as a glob; ``("", [])`` where none is shipped."""
    from dmaml.engines import cores

    groups: dict[str, list[Path]] = {}
    for path in sorted(Path(folder, "benchmarks").glob("bench-*cores*.jsonl")):
        groups.setdefault(path.name.split("cores")[0] + "cores", []).append(path)
    if not groups:
        return "", []

    def distance(name: str) -> int:
        digits = "".join(c for c in name.rsplit("-", 1)[-1] if c.isdigit())
        return abs(int(digits or 0) - cores())

    best = min(sorted(groups, reverse=True), key=distance)  # the newest of the nearest
    return (f"benchmarks/{best}*.jsonl",
            [r for path in groups[best] for r in _bench_records(path)])


def measured_costs(keys: list[dict], cache: Path, folder: Path | None = None,
                   measure_all: bool = False) -> dict[str, dict]:
    """Costs of each workload (by its JSON key), from ``cache`` where this machine measured or
    estimated it before; else, unless ``measure_all``, from the benchmarks shipped in
    ``folder`` (:func:`shipped_bench`) for the datasets and orders they measured, scaled by this
    machine's speed (one of them measured here); the others measured now, each in a fresh
    process. What is found is added to the cache, so that a second plan is instant."""
    from dmaml import bench

    here = machine()
    known = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            if r.get("machine") == here and (not measure_all or r.get("source", "measured here")
                                             == "measured here"):
                known[json.dumps(r.get("workload"), sort_keys=True)] = r
    todo = [k for k in keys if json.dumps(k, sort_keys=True) not in known]
    name, records = shipped_bench(folder) if folder is not None and not measure_all else ("", [])
    cores = _bench_cores(records)
    shipped = {json.dumps(k, sort_keys=True): c for k in todo
               if (c := _from_bench(k, records, cores)) is not None}
    if shipped:  # this machine's speed against the benchmark's: the cheapest conv net workload
        # of a shape, t and n that the benchmark measured (elsewhere FLOPs scale imperfectly)
        ordered = sorted(shipped.values(), key=lambda c: (
            c["workload"]["dataset"] == "sine", not _benched(c["workload"], records),
            c["step_s"]))
        calibration = ordered[0]["workload"]
    todo = [k for k in todo if json.dumps(k, sort_keys=True) not in shipped]
    if shipped:
        todo.insert(0, calibration)
    if '"startup"' not in known:
        todo.insert(0, None)
    if not todo:
        return known
    own = len([k for k in todo if k is not None]) - bool(shipped)
    log.info("plan: %d workload(s) to cost: %d from %s, scaled by one of them measured here; %d "
             "measured here (--measure measures them all)", len(shipped) + own, len(shipped),
             name, own)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dmaml-plan-") as folder_, open(cache, "a") as out:
        data = bench.make_data(Path(folder_))
        for record in measure(todo, data, here, out):
            known[json.dumps(record["workload"], sort_keys=True)] = record
        if shipped:
            own = known[json.dumps(calibration, sort_keys=True)]
            ratio = own["step_s"] / shipped[json.dumps(calibration, sort_keys=True)]["step_s"]
            for key, cost in shipped.items():
                if key in known:
                    continue
                record = dict(cost, step_s=cost["step_s"] * ratio, task_s=cost["task_s"] * ratio,
                              compile_s=own["compile_s"], eval_compile_s=own["eval_compile_s"],
                              source=f"{name} x {ratio:.2f}", machine=here)
                out.write(json.dumps(record) + "\n")
                known[key] = record
    return known


def _benched(key: dict, records: list[dict]) -> bool:
    """Whether one of the benchmark ``records`` measured workload ``key``'s task shape, t and n."""
    from dmaml import bench

    fields = ("dataset", "ways", "shots", "queries", "inner_steps", "tasks_per_step")
    return any("median_s" in r and r["n"] == key["workers"]
               and (r["order"] == "first") == key["first_order"]
               and all(bench.WORKLOADS.get(r["workload"], {}).get(f) == key[f] for f in fields)
               for r in records)


def _bench_records(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--costs {path}: not a `dmaml bench --out` JSON-lines file ({e})") \
            from None


def _bench_cores(records: list[dict]) -> int:
    """The cores the benchmark of ``records`` ran on (its peak record's)."""
    return next((r["cores"] for r in records if r.get("kind") == "matmul_peak" and "cores" in r), 1)


def _from_bench(key: dict, records: list[dict], cores: int) -> dict | None:
    """The cost of workload ``key`` from ``dmaml bench`` ``records`` (of a machine with
    ``cores``): the record of the same dataset and order (of the same task shape and engine
    where measured) nearest in n, its core-seconds per FLOP times the workload's FLOPs over the
    job's threads. None where no record has its dataset and order."""
    from dmaml import bench, config

    cfg = config.load(None, {k: v for k, v in key.items() if k not in ("workers", "engine")})

    def same(r):
        w = bench.WORKLOADS.get(r.get("workload"), {})
        return ("median_s" in r and w.get("dataset") == cfg.dataset
                and (r["order"] == "first") == cfg.first_order)

    def shape(r):
        w = bench.WORKLOADS[r["workload"]]
        return any(w.get(k, 1) != getattr(cfg, k) for k in ("ways", "shots", "queries",
                                                             "inner_steps"))

    found = sorted((r for r in records if same(r)),
                   key=lambda r: (shape(r), r["engine"] != key["engine"],
                                  abs(r["n"] - key["workers"])))
    if not found:
        return None
    r = found[0]
    measured = config.load(None, {**bench.WORKLOADS[r["workload"]], "first_order": cfg.first_order})
    # core-seconds per FLOP: the bench ran on all its cores, a job runs on its threads
    per_flop = r["median_s"] * cores / (r["n"] * bench.flops_per_step(measured))
    return dict(workload=key,
                step_s=per_flop * bench.flops_per_step(cfg) * key["workers"] / key["threads"],
                compile_s=max(r.get("first_run_s", r["median_s"]) - r["median_s"], 0.0),
                task_s=per_flop * bench.eval_flops(cfg) / key["threads"], eval_compile_s=0.0)


def bench_costs(keys: list[dict], path: Path) -> dict[str, dict]:
    """Costs of each workload from a ``dmaml bench`` JSON-lines file (:func:`_from_bench`:
    :func:`dmaml.bench.flops_per_step` for a MAML step, :func:`dmaml.bench.eval_flops` for an
    evaluated task)."""
    records = _bench_records(path)
    startup = next((r["seconds"] for r in records if r.get("workload") == "startup"), 5.0)
    cores = _bench_cores(records)
    costs = {'"startup"': dict(workload="startup", seconds=startup)}
    for key in keys:
        cost = _from_bench(key, records, cores)
        if cost is None:
            raise ConfigError(f"--costs {path}: no measurement of {key['dataset']}, "
                              f"{'first' if key['first_order'] else 'second'} order; leave "
                              "--costs out to measure it now")
        costs[json.dumps(key, sort_keys=True)] = cost
    return costs


# --- arithmetic ---------------------------------------------------------------------------------

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


def sources(costs: list[dict], here: str) -> str:
    """Where the costs of a plan came from, in words."""
    counts: dict[str, int] = {}
    for cost in costs:
        source = cost.get("source", "measured here")
        counts[source] = counts.get(source, 0) + 1
    words = {"measured here": f"measured on {here}"}
    return "costs of " + ", ".join(
        f"{n} workload{'s' if n > 1 else ''} "
        + words.get(source, f"from {source} (scaled by the speed measured here)")
        for source, n in sorted(counts.items()))


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


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(measure_one(json.loads(sys.argv[2]))), flush=True)
