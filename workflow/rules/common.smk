# The Python side of the workflow, shared by the rule files (the Snakefile includes it first; the
# other .smk files hold rules only). In order: the configuration, read and checked against
# workflow/schemas/config.schema.yaml before any job; the data stage's inputs (where the raw data
# come from); the training runs behind each table and figure (expanded by src/dmaml/grid.py) and
# their folder names; which source files are inputs of the report rules, and the digest file
# that stands for the training code; the shell prefix and wildcard constraints; each training
# job's flags, threads, runtime and memory; and the launcher of the cluster engine (Ray across
# SLURM nodes).
import hashlib
import json
import shlex
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from dmaml import grid
from dmaml.config import RunConfig, resolve
from dmaml.engines import choose
from dmaml.errors import ConfigError

# keys whose values are text: never read as YAML ("Table 2: ..." would become a mapping)
TEXT_KEYS = {"source", "title"}


def parse_nested(values):
    """`--config "train={steps: 100, seeds: [0]}"` gives nested values as strings ('100', '0'):
    read them as YAML, as the config file is read, before checking the types. Text stays text:
    paths, titles, and any string YAML would read as a mapping without braces."""
    items = values.items() if isinstance(values, dict) else enumerate(values)
    for key, value in items:
        if isinstance(value, (dict, list)):
            parse_nested(value)
        elif isinstance(value, str) and key not in TEXT_KEYS:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                continue
            if not isinstance(parsed, dict) or value.lstrip().startswith("{"):
                values[key] = parsed


parse_nested(config)
try:
    grid.check_top_level(config, workflow.basedir)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

validate(config, schema="../schemas/config.schema.yaml")


def data_targets():
    """The dataset files the configuration can build: Omniglot always, miniImageNet once its
    source is set."""
    targets = ["resources/omniglot.h5"]
    if config["miniimagenet"]["source"]:
        targets.append("resources/miniimagenet.h5")
    return targets


def omniglot_strict(wildcards):
    return "--strict" if config["omniglot"]["strict"] else ""


def miniimagenet_source(wildcards):
    """The configured miniImageNet folder; without one, stop before any job runs."""
    source = config["miniimagenet"]["source"]
    if not source:
        raise WorkflowError(
            "resources/miniimagenet.h5 needs a local copy of miniImageNet, which has no free "
            "download: set `miniimagenet: {source: PATH}` in config.yaml (or pass --config "
            '"miniimagenet={source: PATH}"); `dmaml prepare-miniimagenet --help` lists the '
            "accepted forms and where people get them."
        )
    return source


def miniimagenet_aggregate(wildcards):
    if config["miniimagenet"]["aggregate_val_test"]:
        return "--aggregate-val-test"
    return "--no-aggregate-val-test"


# --- experiments: the training runs behind each table and figure ------------------------------
# Each entry of `experiments:` in config.yaml names its dataset and settings; list values span a
# grid. A run folder is named from its wildcards, and every other setting reaches the job
# through `params:`, so changing one re-runs exactly the jobs that use it.

RUN_ID = grid.RUN_ID
RUN = f"results/runs/{RUN_ID}"
FIGURE_KINDS = {"fig3": "workers", "fig4": "steps_per_run", "fig5": "tasks", "fig6": "split", "fig7": "merge"}
SRC = Path(workflow.basedir, "src", "dmaml")
# Modules that cannot change a run's numbers, so editing them re-runs no training: the command
# line and the Python API (both call the learner), the grid expansion (a run's settings reach it
# as flags), run monitoring, progress reports and the run folder's lock, provenance and error
# texts, data preparation (its output, the HDF5 file, is an input of its own), and the whole
# folders of the report and of the costs (`dmaml plan`, `dmaml bench`: a new module there never
# counts). Any other module (a new one too) is training code.
NOT_TRAINING_FOLDERS = {"report", "costs"}
NOT_TRAINING_CODE = {
    "cli.py",
    "api.py",
    "grid.py",
    "progress.py",
    "status.py",
    "run_lock.py",
    "provenance.py",
    "errors.py",
    "data/cli.py",
    "data/download.py",
    "data/omniglot.py",
    "data/miniimagenet.py",
}
TRAINING_MODULES = sorted(
    p
    for p in SRC.rglob("*.py")
    if p.relative_to(SRC).parts[0] not in NOT_TRAINING_FOLDERS
    and p.relative_to(SRC).as_posix() not in NOT_TRAINING_CODE
)


def code_digest(modules, path):
    """One file standing for the version of `modules` (a sha256 line each), rewritten only when
    one of them changed: an input whose date is that of the last change that can alter a number,
    so that such a change re-runs the jobs that use it, and the terminal shows one file."""
    text = "".join(
        f"{hashlib.sha256(m.read_bytes()).hexdigest()}  {m.relative_to(SRC).as_posix()}\n" for m in modules
    )
    path = Path(path)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


TRAINING_CODE = code_digest(TRAINING_MODULES, "results/code/training.sha256")
REPORT_CODE = sorted(str(p) for p in SRC.glob("report/*.py")) + [str(SRC / "cli.py")]
# Jobs run this workflow's own source tree (`python -m dmaml.cli`), so that a job runs exactly
# the code its `code` inputs name; the environment provides the dependencies.
# (The prefix replaces Snakemake's own, so it restores bash's strict mode: a failing command of
# a pipe fails the job.)
shell.prefix(f"set -euo pipefail; export PYTHONPATH={SRC.parent}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


def log_and_show(levels):
    """The end of a shell command (for an f-string rule command) that writes its output to
    {log} and shows dmaml's own lines of these levels, e.g. "INFO|WARNING|ERROR", on the
    terminal as they come."""
    pattern = f"^[0-9:]{{{{8}}}} ({levels}) "
    return f"2>&1 | tee {{log}} | {{{{ grep -E --line-buffered '{pattern}' >&2 || true; }}}}"


wildcard_constraints:
    experiment=r"[a-z0-9_]+",
    dataset="sine|omniglot|miniimagenet",
    ways=r"\d+",
    shots=r"\d+",
    workers=r"\d+",
    m=r"\d+",
    t=r"\d+",
    merge="mean|weighted|drop_worst",
    reduction="mean|sum",
    seed=r"\d+",


def settings(name):
    """An experiment's settings (dmaml.grid.settings)."""
    return grid.settings(config, name)


def runs(name):
    """The wildcards of every run of an experiment (dmaml.grid.runs)."""
    return grid.runs(config, name)


def ablation_arms(name):
    """The experiments that are the arms of the ablation table `name` (config `ablation:`)."""
    if name not in config.get("ablation", {}):
        raise ValueError(
            f"config ablation: has no table {name!r}; known: {sorted(config.get('ablation', {}))}"
        )
    return config["ablation"][name]


def run_dirs(name):
    """Every run folder of an experiment."""
    return [RUN.format(**w) for w in runs(name)]


def wildcard_settings(wildcards):
    """The `dmaml train` settings of the run a training job's wildcards name."""
    return grid.run_settings(config, **{k: wildcards[k] for k in ("experiment", *grid.GRID.values())})


def run_flags(wildcards):
    """`dmaml train` flags of one run (every setting, so that a change re-runs the job)."""
    values = wildcard_settings(wildcards)
    return " ".join(
        f"--{k} {json.dumps(v, separators=(',', ':'))!r}" if isinstance(v, list) else f"--{k} {v}"
        for k, v in sorted(values.items())
    )


def check_experiments():
    """Check every run's settings now, so that a wrong value stops the workflow before any job."""
    try:
        grid.check_experiments(config, files=[*workflow.configfiles, *workflow.overwrite_configfiles])
    except ConfigError as e:
        raise WorkflowError(str(e)) from None


def dataset_file(wildcards):
    """The run's dataset file; where it exists, checked now against the run's tasks (so that a
    dry run stops at `ways: 5000`, not the job)."""
    if wildcards.dataset == "sine":
        return []
    try:
        grid.check_data(resolve(RunConfig(**wildcard_settings(wildcards))))
    except ConfigError as e:
        raise WorkflowError(f"experiments.{wildcards.experiment}: {e}") from None
    return [f"resources/{wildcards.dataset}.h5"]


def train_threads(wildcards):
    return min(int(wildcards.workers), config["train_threads"])


def train_runtime(wildcards):
    """Minutes to request: the configured seconds per task times the tasks of the run, twice."""
    exp = settings(wildcards.experiment)
    seconds = config["seconds_per_task"][wildcards.dataset] * exp["steps"] * int(wildcards.t)
    seconds *= max(1.0, int(wildcards.workers) / train_threads(wildcards))
    return int(30 + 2 * seconds / 60)


def train_mem(wildcards):
    """MiB to request: the learner's process (with the data and its evaluation), one TensorFlow
    runtime more per worker process of the engine the run gets (auto: a process per thread for
    conv4 workers), and 100 a worker. Peak RSS of a worker process measured by `dmaml bench`
    (n = 4 on 2 processes): Omniglot 1.1 GB (2.7 GB for 20-way tasks, which run task by task),
    miniImageNet 2.1 GB, sine 0.7 GB."""
    cfg = resolve(RunConfig(**wildcard_settings(wildcards)))
    engine, _ = choose(cfg, train_threads(wildcards))
    processes = min(cfg.workers, train_threads(wildcards)) if engine == "processes" else 0
    big = cfg.ways * (cfg.shots + cfg.queries) > 20
    base = {"sine": 1500, "omniglot": 3000, "miniimagenet": 6000}[cfg.dataset]
    per_process = {"sine": 700, "omniglot": 2000 if big else 1000, "miniimagenet": 2000}[cfg.dataset]
    return base + processes * per_process + 100 * cfg.workers


# `engine: cluster`: the run's workers are Ray actors, launched by workflow/scripts/ray_srun.sh
# (a local Ray instance outside SLURM). With `cluster_nodes: K` > 1 its SLURM job spans K nodes
# (threads and mem_mb per node) and starts one Ray node per node with its own srun (mpi);
# resources left None are unset, so other engines keep one job on one node.


def cluster_engine(wildcards):
    return settings(wildcards.experiment).get("engine") == "cluster"


def cluster_nodes(wildcards):
    nodes = config.get("cluster_nodes", 1)
    return nodes if cluster_engine(wildcards) and nodes > 1 else None


def cluster_mpi(wildcards):
    return "srun" if cluster_nodes(wildcards) else None


def train_launcher(wildcards):
    if not cluster_engine(wildcards):
        return ""
    return f"bash {shlex.quote(str(Path(workflow.basedir, 'workflow/scripts/ray_srun.sh')))} "


check_experiments()
