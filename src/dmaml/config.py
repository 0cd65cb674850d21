"""Run settings: one dataclass whose field names are the project's vocabulary (docs/design.md).

The same names are used as keys of a run's YAML file, as ``dmaml train --key value`` flags and as
CSV columns. Settings left unset take the paper's Table 6 value for the chosen dataset
(:data:`DATASET_DEFAULTS`); :func:`resolve` fills them in and checks every value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dmaml import atomic
from dmaml.errors import ConfigError

DATASETS = ("sine", "omniglot", "miniimagenet")
MERGES = ("mean", "weighted", "drop_worst")
# the values of the `engine` setting (bench_measure.LOCAL_ENGINES: the engines `dmaml bench` compares)
ENGINE_CHOICES = ("auto", "sequential", "vectorized", "processes", "cluster")
REDUCTIONS = ("mean", "sum")
DIVERGENCE = ("stop", "drop")
# Implementation choices the paper leaves open (docs/design.md, "Choices the paper leaves open");
# the first of each is ours and the default.
BATCH_NORMS = ("batch", "running", "frozen")
FEATURES = ("flatten", "mean")
ADAM_STATES = ("keep", "reset")
PIXELS = ("unit", "inverted", "raw")

# The paper's Table 6 (appendix B), per dataset. Keys not listed fall back to the field default.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "sine": dict(ways=1, shots=10, queries=10, alpha=0.01, beta=0.01, tasks_per_step=10,
                 inner_steps=1, eval_inner_steps=1),
    "omniglot": dict(ways=5, shots=1, queries=1, alpha=0.4, beta=0.01, tasks_per_step=32,
                     inner_steps=1, eval_inner_steps=3, data="resources/omniglot.h5"),
    "miniimagenet": dict(ways=5, shots=1, queries=15, alpha=0.4, beta=0.01, tasks_per_step=4,
                         inner_steps=5, eval_inner_steps=10, data="resources/miniimagenet.h5"),
}


def setting(default: Any, help: str, *, minimum: int | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """A field of :class:`RunConfig` with what the rest of the project reads from it: its
    ``help`` (``dmaml train --help``), the ``minimum`` of an integer and the ``choices`` of a
    text value (both checked by :func:`resolve`, and equal to the workflow schema's:
    tests/test_config_source.py). A list default is copied for each config."""
    meta = {"help": help, "minimum": minimum, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Every setting of one DMAML training run. ``None`` means "the dataset's Table 6 value"."""

    dataset: str = setting("omniglot", "sine | omniglot | miniimagenet", choices=DATASETS)
    data: str | None = setting(None, "HDF5 file of the dataset (classification)")
    ways: int | None = setting(None, "N, classes per task", minimum=1)
    shots: int | None = setting(None, "k, support examples per class (sine: support points)",
                                minimum=1)
    queries: int | None = setting(None, "k', query examples per class (sine: query points)",
                                  minimum=1)
    workers: int = setting(1, "n, DMAML workers", minimum=1)
    steps_per_run: int = setting(1, "m, consecutive MAML steps each worker makes per run",
                                 minimum=1)
    tasks_per_step: int | None = setting(None, "t, tasks per MAML step", minimum=1)
    steps: int = setting(10000, "MAML steps of the central model (runs x m)", minimum=1)
    merge: str = setting("mean", "mean | weighted | drop_worst", choices=MERGES)
    merge_temperature: float = setting(
        1.0, "T of the weighted merge, relative to the spread of the workers' probe scores: "
        "weights softmax(-(s - min s) / (T std s))")
    merge_drop: float = setting(
        0.25, "fraction of the workers drop_worst leaves out (those of worst probe score)")
    merge_probe_tasks: int = setting(
        16, "training tasks on which weighted and drop_worst score each worker's returned "
        "parameters (adapted as at validation)", minimum=2)
    worker_schedule: list[list[int]] | None = setting(
        None, "[[from_step, n], ...]: fewer workers later in training, e.g. [[0,4],[500,2]] or "
        "0,4 500,2 [default: n throughout]")
    alpha: float | None = setting(None, "inner (adaptation) learning rate")
    beta: float | None = setting(None, "meta learning rate (Adam)")
    inner_steps: int | None = setting(None, "adaptation steps in training", minimum=0)
    eval_inner_steps: int | None = setting(None, "adaptation steps at validation and test",
                                           minimum=0)
    first_order: bool = setting(
        False, "true: first-order MAML (no gradient through the inner updates)")
    outer_reduction: str = setting("mean", "mean | sum of the task meta-gradients",
                                   choices=REDUCTIONS)
    # the choices the paper leaves open (docs/design.md); the first of each is the default
    batch_norm: str = setting(
        "batch", "batch (each batch's statistics, always: MAML's) | running (Keras moving "
        "statistics, used at validation and test) | frozen (moving statistics never updated: "
        "0 and 1)", choices=BATCH_NORMS)
    features: str = setting(
        "flatten", "flatten | mean: the last feature map into the dense layer (mean: "
        "cbfinn/maml's Omniglot model)", choices=FEATURES)
    adam_state: str = setting(
        "keep", "keep (each worker's Adam moments from run to run) | reset (a new Adam each "
        "run)", choices=ADAM_STATES)
    pixels: str = setting(
        "unit", "unit (in [0, 1], as stored) | inverted (1 minus that: strokes 1) | raw (0-255): "
        "the images the model sees", choices=PIXELS)
    eval_every: int = setting(100, "MAML steps between validations (a metrics.csv row each)",
                              minimum=1)
    val_tasks: int = setting(10, "validation tasks", minimum=1)
    test_tasks: int = setting(600, "test tasks at each checkpoint step (0: no testing)",
                              minimum=0)
    checkpoint_steps: list[int] = setting(
        [500, 1000, 2000, 4000, 8000, 10000], "steps whose parameters are kept and tested, e.g. "
        "500,1000 or [500,1000] or 500 1000")
    checkpoint_every: int | None = setting(
        None, "MAML steps between resume checkpoints [default: eval_every]", minimum=1)
    seed: int = setting(0, "seed of initialisation and training tasks")
    eval_seed: int = setting(1234, "seed of the validation and test tasks (same for every run)")
    engine: str = setting("auto", "auto (the fastest here: engines.choose, docs/engines.md) | "
                          "sequential | vectorized | processes | cluster", choices=ENGINE_CHOICES)
    threads: int = setting(0, "TensorFlow intra-op threads (0: all cores)", minimum=0)
    on_divergence: str = setting("stop", "stop | drop (leave a non-finite worker out of the "
                                 "merge): what a non-finite worker does", choices=DIVERGENCE)
    tensorboard: bool = setting(True, "true: TensorBoard scalars in the run folder's tensorboard/")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run file (optional), apply ``overrides`` and return the resolved config."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read the run config ({e})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a run config must be a mapping of settings")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(FIELDS)}")
    return resolve(RunConfig(**values))


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill dataset defaults into unset fields and check every value; returns a new config."""
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"dataset: unknown dataset '{cfg.dataset}'; choose one of {DATASETS}")
    filled = {k: v for k, v in DATASET_DEFAULTS[cfg.dataset].items() if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, **filled)
    if cfg.checkpoint_every is None:
        cfg.checkpoint_every = cfg.eval_every
    _check(cfg)
    return cfg


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check(c: RunConfig) -> None:
    for key, f in FIELDS.items():
        value, minimum, choices = getattr(c, key), f.metadata["minimum"], f.metadata["choices"]
        if minimum is not None and key != "merge_probe_tasks":  # its own message, below
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                     key, f"must be an integer >= {minimum}, got {value!r}")
        if choices is not None:
            _require(value in choices, key, f"choose one of {choices}, got {value!r}")
    for key in ("alpha", "beta", "merge_temperature"):
        value = getattr(c, key)
        _require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, key,
                 f"must be a positive number, got {value!r}")
    _require(isinstance(c.merge_probe_tasks, int) and not isinstance(c.merge_probe_tasks, bool)
             and c.merge_probe_tasks >= 2, "merge_probe_tasks",
             f"must be an integer >= 2 (the tasks each worker is scored on; 16 is the default), "
             f"got {c.merge_probe_tasks!r}")
    drop = c.merge_drop
    _require(isinstance(drop, (int, float)) and not isinstance(drop, bool) and 0 <= drop < 1,
             "merge_drop", f"must be the fraction of the workers drop_worst leaves out, in [0, 1) "
             f"such as 0.25 (no longer a count of workers), got {drop!r}")
    for key in ("first_order", "tensorboard"):
        _require(isinstance(getattr(c, key), bool), key,
                 f"must be true or false, got {getattr(c, key)!r}")
    m = c.steps_per_run
    _require(c.steps % m == 0, "steps", f"{c.steps} is not a multiple of steps_per_run={m}")
    _require(c.eval_every % m == 0, "eval_every",
             f"{c.eval_every} is not a multiple of steps_per_run={m}")
    _require(c.checkpoint_every % m == 0, "checkpoint_every",
             f"{c.checkpoint_every} is not a multiple of steps_per_run={m}")
    _require(isinstance(c.checkpoint_steps, list), "checkpoint_steps",
             f"must be a list of steps such as [500, 1000], got {c.checkpoint_steps!r}")
    for s in c.checkpoint_steps:
        _require(isinstance(s, int) and s >= 1 and s % m == 0, "checkpoint_steps",
                 f"{s!r} must be a positive multiple of steps_per_run={m}")
    if c.dataset == "sine":
        _require(c.ways == 1, "ways", "sine regression has ways = 1")
        for key, ours in (("batch_norm", "batch"), ("features", "flatten"), ("pixels", "unit")):
            _require(getattr(c, key) == ours, key,
                     f"sine tasks have no images, and their MLP no batch norm: leave it at "
                     f"{ours!r}")
    elif not c.data:
        raise ConfigError(f"data: set the HDF5 file of the {c.dataset} dataset")
    if c.worker_schedule is not None:
        sched = c.worker_schedule
        pairs = isinstance(sched, list) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, int) for v in p)
            for p in sched)
        _require(pairs, "worker_schedule", "must be a list of [from_step, workers] pairs such as "
                 f"[[0, 4], [500, 2]], got {sched!r}")
        ns = [n for _, n in sorted(sched)]
        _require(all(1 <= n <= c.workers for n in ns), "worker_schedule",
                 f"worker counts must be between 1 and workers={c.workers}")
        _require(ns == sorted(ns, reverse=True), "worker_schedule",
                 "worker counts may only decrease over training")


def inert(cfg: RunConfig) -> set[str]:
    """Settings that cannot change this run's numbers: the merge settings its strategy does not
    read (a run may resume from a checkpoint that differs in them)."""
    unread = {"mean": ("merge_temperature", "merge_drop", "merge_probe_tasks"),
              "weighted": ("merge_drop",), "drop_worst": ("merge_temperature",)}
    return set(unread.get(cfg.merge, ()))


def workers_at(cfg: RunConfig, step: int) -> int:
    """The number of workers for the run that starts at MAML step ``step``."""
    n = cfg.workers
    for start, count in sorted(cfg.worker_schedule or []):
        if step >= start:
            n = count
    return n


def dump(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic.write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe(cfg: RunConfig) -> str:
    """One line naming a run's setting, e.g. 'omniglot 5-way 1-shot, n=4 m=1 t=32, ...'."""
    task = "sine" if cfg.dataset == "sine" else f"{cfg.dataset} {cfg.ways}-way {cfg.shots}-shot"
    return (f"{task}, n={cfg.workers} m={cfg.steps_per_run} t={cfg.tasks_per_step}, "
            f"{cfg.steps} steps, seed {cfg.seed}, engine {cfg.engine}")
