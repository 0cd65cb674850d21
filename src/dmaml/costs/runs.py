"""The training jobs behind ``dmaml plan``'s targets: the configuration as Snakemake reads it,
the experiments of each target and their runs, as the workflow makes them.

The configuration: the workflow folder's ``config.yaml``, then each ``--configfile`` merged over
it key by key, checked against ``workflow/schemas/config.schema.yaml`` with its defaults filled
in. The runs come from :mod:`dmaml.grid`, the expansion the workflow itself makes; each gets the
threads Snakemake gives the job (``min(n, train_threads, cores)``), and :func:`workload` names
what its cost depends on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from dmaml import grid
from dmaml.config import RunConfig, resolve
from dmaml.errors import ConfigError

SCHEMA = grid.SCHEMA
# Targets that stand for several experiments (the Snakefile's rules of the same names).
GROUPS = {"figures": "fig", "all": ""}


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
        except FileNotFoundError:
            if path in configfiles:  # a target after --configfile is taken for a file, too
                raise ConfigError(f"configfile {path}: no such file; give --configfile existing "
                                  "files (it takes every word after it: put targets before "
                                  "it)") from None
            raise ConfigError(f"configfile {path}: no such file; run in the workflow's folder "
                              "or give it with --directory") from None
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
    ``fig3_wall``), ``reproduction`` (its tables), ``ablation`` (the arms of every ablation
    table) or one ablation table by name, ``figures`` or ``all`` [default]."""
    tables = config.get("ablation", {})
    known = list(config["experiments"])
    chosen = {}
    for target in targets or ["all"]:
        name = target.removesuffix("_wall")
        if target in GROUPS:
            chosen.update({e: [e] for e in known if e.startswith(GROUPS[target])})
        elif target == "reproduction":
            chosen.update({e: [e] for e in config["reproduction"]})
        elif target == "ablation" or target in tables:
            chosen.update({e: [e] for t in (tables if target == "ablation" else [target])
                           for e in tables[t]})
        elif name in known:
            chosen[name] = [name]
        else:
            raise ConfigError(f"dmaml plan: unknown target {target!r}; targets are the "
                              f"experiments {known}, their *_wall figures, reproduction, "
                              f"ablation, the ablation tables {sorted(tables)}, "
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
