"""The training runs behind each table and figure: the workflow's grid expansion.

Each entry of ``experiments:`` in the workflow's configuration names its dataset and settings;
list values span a grid, ``splits: [[n, t], ...]`` pairs workers with tasks per step,
``from: NAME`` takes the settings and run folders of another experiment (its own grid keys
over them) and ``also: [NAME, ...]`` adds the runs of others. ``workflow/rules/common.smk`` and
``dmaml plan`` both expand the grid here, so the plan lists exactly the runs Snakemake trains.
Every function takes the (validated, defaults filled) workflow configuration as ``config``.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np
import yaml

from dmaml.config import DATASET_DEFAULTS, RunConfig, resolve
from dmaml.config import FIELDS as RUN_FIELDS
from dmaml.errors import ConfigError, DatasetError

# a run folder's name under results/runs/, from its wildcards
RUN_ID = "{experiment}/{dataset}-{ways}w{shots}s-n{workers}-m{m}-t{t}-{merge}-{reduction}/seed{seed}"
# experiment key -> wildcard of a run folder
GRID = {
    "dataset": "dataset",
    "ways": "ways",
    "shots": "shots",
    "workers": "workers",
    "steps_per_run": "m",
    "tasks_per_step": "t",
    "merge": "merge",
    "outer_reduction": "reduction",
    "seeds": "seed",
}
INTEGER_GRID_KEYS = {"ways", "shots", "workers", "steps_per_run", "tasks_per_step", "seeds"}
# experiment keys that shape the grid or the report, not a training run
REPORT_KEYS = {"from", "also", "splits", "test_shots", "max_step", "sum_beta_per_task", "title"}


def settings(config: dict, name: str) -> dict:
    """An experiment's settings: the dataset's Table 6 values, the `train:` defaults, then its
    own. An experiment with `from: OTHER` has OTHER's settings with its own grid and report keys
    over them (:func:`check_experiments` allows no others), and its runs live in OTHER's run
    folders (:func:`home`), so a run the two share trains once."""
    exp = config["experiments"][name]
    if "from" in exp:
        return {**settings(config, exp["from"]), **{k: v for k, v in exp.items() if k != "from"}}
    return {**DATASET_DEFAULTS[exp["dataset"]], **config["train"], **exp}


def home(config: dict, name: str) -> str:
    """The experiment whose run folders hold an experiment's runs: the end of its `from:`."""
    exp = config["experiments"][name]
    return home(config, exp["from"]) if "from" in exp else name


def as_list(value) -> list:
    """A grid value as a list (a scalar is a grid of one)."""
    return value if isinstance(value, list) else [value]


def _runs(config: dict, name: str) -> list[dict]:
    """The runs an experiment names itself: the product of its list-valued grid keys (with
    `splits: [[n, t], ...]` pairing workers and tasks per step instead), then the runs of the
    experiments it names in `also: [NAME, ...]`."""
    exp = settings(config, name)
    grid = {w: as_list(exp[k]) for k, w in GRID.items()}
    pairs = exp.get("splits") or list(itertools.product(grid["workers"], grid["t"]))
    keys = ("dataset", "ways", "shots", "m", "merge", "reduction", "seed")
    own = [
        {"experiment": home(config, name), "workers": n, "t": t, **dict(zip(keys, values))}
        for values in itertools.product(*(grid[k] for k in keys))
        for n, t in pairs
    ]
    return own + [w for other in exp.get("also", []) for w in _runs(config, other)]


def setting(run: dict) -> str:
    """A run folder's setting: its name without the seed (the folder of all its seeds)."""
    return RUN_ID.format(**{**run, "seed": "*"})


def runs(config: dict, name: str) -> list[dict]:
    """The wildcards of every run of an experiment (:func:`_runs`), and of every other seed the
    configuration trains in one of their settings (:func:`setting`): a table or figure chooses
    among, or averages over, all the seeds of a setting, so that the setting shows one value
    wherever it appears (Table 7's n = 1 reference is Table 2's n = 1 row)."""
    own = _runs(config, name)
    settings_, names = {setting(w) for w in own}, {RUN_ID.format(**w) for w in own}
    others = [w for other in config["experiments"] for w in _runs(config, other)
              if setting(w) in settings_ and RUN_ID.format(**w) not in names]
    return own + list({RUN_ID.format(**w): w for w in others}.values())


def run_settings(config: dict, experiment: str, dataset: str, ways, shots, workers, m, t,
                 merge: str, reduction: str, seed) -> dict:
    """The `dmaml train` settings of one run: the experiment's scalars and the run's wildcards
    (given as numbers or, from Snakemake, as text)."""
    exp = settings(config, experiment)
    values = {
        k: v
        for k, v in exp.items()
        if k in RUN_FIELDS and k not in REPORT_KEYS and k not in GRID and v is not None
    }
    values.update(
        dataset=dataset,
        ways=int(ways),
        shots=int(shots),
        workers=int(workers),
        steps_per_run=int(m),
        tasks_per_step=int(t),
        merge=merge,
        outer_reduction=reduction,
        seed=int(seed),
    )
    if reduction == "sum" and "sum_beta_per_task" in exp:
        # Figure 5, bottom row: the rate grows with the tasks summed (0.001 at t = 32)
        values["beta"] = exp["sum_beta_per_task"] * int(t)
    if dataset != "sine":
        values["data"] = f"resources/{dataset}.h5"
    values["checkpoint_steps"] = [s for s in values["checkpoint_steps"] if s <= values["steps"]]
    return values


SCHEMA = "workflow/schemas/config.schema.yaml"


def check_top_level(config: dict, folder: Path, where: str = "config") -> None:
    """Unknown top-level keys (a typo such as ``omniglott``) are an error naming them and the
    known ones (the schema's, in the workflow folder ``folder``)."""
    known = yaml.safe_load((Path(folder) / SCHEMA).read_text())["properties"]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {unknown}; known keys are "
                          f"{sorted(known)} ({SCHEMA})")


def origin(files: list[Path], section: str, keys: list[str]) -> str:
    """The last of ``files`` (config.yaml, then each --configfile, as merged) that sets one of
    ``keys`` in ``section`` (``train`` or ``experiments.NAME``); ``--config`` where none does."""
    found = "--config"
    for path in files:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        part = values.get("train") if section == "train" else \
            (values.get("experiments") or {}).get(section.split(".", 1)[1])
        if isinstance(part, dict) and set(keys) & set(part):
            found = str(path)
    return found


def _sections(config: dict, name: str) -> list[str]:
    """The sections an experiment's settings come from (:func:`settings`), the nearest first:
    ``experiments.NAME``, those of its `from:` chain, then ``train``."""
    exp = config["experiments"][name]
    return [f"experiments.{name}",
            *(_sections(config, exp["from"]) if "from" in exp else ["train"])]


def check_experiments(config: dict, where: str = "config.yaml", files: list[Path] = ()) -> None:
    """Check every run's settings now, so that a wrong value stops before any job: a
    ConfigError naming the section and key, and the file of ``files`` (config.yaml, then each
    --configfile) that set it; ``where`` without ``files``."""

    def blame(sections: list[str], keys: list[str]) -> str:
        """The file that set one of ``keys`` in the nearest of ``sections`` that has them."""
        if not files:
            return where
        found = [origin(files, section, keys) for section in sections]
        return next((f for f in found if f != "--config"), "--config")

    known = set(RUN_FIELDS) | set(GRID) | REPORT_KEYS
    sections = {"train": config["train"],
                **{f"experiments.{k}": v for k, v in config["experiments"].items()}}
    for section, values in sections.items():
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{blame([section], unknown)}, {section}: unknown "
                f"key(s) {unknown}; known keys are "
                f"the `dmaml train` settings and {sorted(GRID.keys() | REPORT_KEYS)}"
            )
        if "from" in values:
            training = sorted(set(values) - set(GRID) - REPORT_KEYS)
            if training:
                raise ConfigError(
                    f"{blame([section], training)}, {section}: {training} would not reach the "
                    f"runs of `from: {values['from']}` (an experiment with `from:` may set grid "
                    f"keys {sorted(GRID)} and report keys only); give the experiment its own "
                    "settings instead of `from:`")
        for key in ("from", "also"):
            for other in as_list(values.get(key, [])):
                if other not in config["experiments"]:
                    raise ConfigError(f"{blame([section], [key])}, {section}: {other!r} is not "
                                      f"an experiment; known: {sorted(config['experiments'])}")
        for key in INTEGER_GRID_KEYS & set(values):
            if not all(type(v) is int for v in as_list(values[key])):
                raise ConfigError(
                    f"{blame([section], [key])}, {section}: {key}: must be an integer or a list "
                    f"of integers, got {values[key]!r}"
                )
    for name in config["experiments"]:
        for wildcards in runs(config, name):
            try:
                resolve(RunConfig(**run_settings(config, **wildcards)))
            except (ConfigError, TypeError, KeyError) as e:
                key = str(e).split(":", 1)[0]  # a ConfigError starts with its setting's name
                at = blame(_sections(config, name), [key]) if key in known else where
                raise ConfigError(f"{at}, experiments.{name}: {e}") from None


def check_data(cfg: RunConfig, folder: Path = Path(".")) -> None:
    """Where the run's dataset file exists (under ``folder``, the workflow's), a ConfigError
    unless its splits can serve the run's tasks, so that `ways: 5000` stops the dry run, not
    the job. Reads the class sizes only (once per file and split)."""
    from dmaml.tasks import check_fits

    path = Path(folder, cfg.data) if cfg.data else None
    if path is None or not path.is_file():
        return  # sine, or built by the data stage before the runs
    for split in ("train", "val", "test"):
        sizes = _class_sizes(path, split, path.stat().st_mtime_ns)
        if sizes is None:
            continue  # unreadable: the job says what is wrong with the file
        try:
            check_fits(cfg.data, split, *sizes, cfg.ways, cfg.shots, cfg.queries)
        except DatasetError as e:
            raise ConfigError(str(e)) from None


@functools.cache
def _class_sizes(path: Path, split: str, mtime_ns: int) -> tuple | None:
    """Class names and sizes of ``split`` of a dataset file (None where it cannot be read)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return tuple(f[split]["class_names"].asstr()[...]), np.diff(f[split]["offsets"][...])
    except (OSError, KeyError):
        return None
