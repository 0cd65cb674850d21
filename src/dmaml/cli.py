"""The ``dmaml`` command line: ``train``, ``evaluate``, ``table`` and ``figure`` here; ``bench``,
``plan``, ``status`` and the data-preparation commands registered from their own modules.

Every run setting is a ``--key value`` flag named as in the config file (docs/design.md, "Run
settings"), with the help text of its field of :class:`dmaml.config.RunConfig`; flags override
the file given with ``--config``. Values are read as YAML, so booleans work (``--first_order
true``); list settings take ``500,1000``, ``[500,1000]`` or ``500 1000``.
Flags may be spelt with ``-`` or ``_``: ``--steps-per-run`` is ``--steps_per_run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import logging
import sys
from pathlib import Path

import yaml

from dmaml import __version__, atomic, run_folder, run_lock
from dmaml.config import DATASET_DEFAULTS, DATASETS, FIELDS
from dmaml.costs.bench import add_command as add_bench_command
from dmaml.costs.plan import add_command as add_plan_command
from dmaml.data.cli import add_commands as add_data_commands
from dmaml.errors import ConfigError, TrainingDiverged, TrainingInterrupted, UserError
from dmaml.status import add_command as add_status_command

log = logging.getLogger("dmaml")


def _value(text: str):
    """A flag value: YAML (numbers, lists, booleans), with '1e-3'-style floats accepted."""
    try:
        return float(text) if "e" in text.lower() and text[0] in "0123456789.-+" else \
            yaml.safe_load(text)
    except ValueError:
        return yaml.safe_load(text)


# List settings: how deep their items nest (1: [500,1000]; 2: [[0,4],[500,2]]) and the forms an
# unreadable value is told to take.
LISTS = {
    "checkpoint_steps": (1, "a list of steps such as 500,1000 or [500,1000]"),
    "worker_schedule": (2, "[from_step, workers] pairs such as [[0,4],[500,2]] or 0,4 500,2"),
}


def _ints(value, depth: int) -> bool:
    """Whether ``value`` is lists nested ``depth`` deep with integers at the bottom."""
    if depth == 0:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, list) and all(_ints(v, depth - 1) for v in value)


def _list_part(name: str, token: str) -> list:
    """One word of a list flag (``500,1000``, ``[500,1000]``, ``500``; pairs alike) as a list."""
    depth, form = LISTS[name]
    try:
        value = yaml.safe_load(token if token.lstrip().startswith("[") else f"[{token}]")
    except yaml.YAMLError:
        value = None
    if depth == 2 and value and _ints(value, 1):
        value = [value]  # one pair a word: 0,4 500,2
    if not _ints(value, depth):
        raise argparse.ArgumentTypeError(f"cannot read {token!r}; expected {form}")
    return value


def _add_flag(container, flag: str, **kwargs) -> None:
    """Add ``flag`` and, hidden from the help, its other spelling (``_`` and ``-`` swapped)."""
    container.add_argument(flag, **kwargs)
    name = flag[2:]
    other = "--" + (name.replace("_", "-") if "_" in name else name.replace("-", "_"))
    if other != flag:
        container.add_argument(other, **{**kwargs, "help": argparse.SUPPRESS})


def _default(name: str) -> str:
    """The ``[default: ...]`` of a run flag's help: each dataset's Table 6 value, or the field's."""
    per_dataset = ", ".join(f"{d} {DATASET_DEFAULTS[d][name]}" for d in DATASETS
                            if name in DATASET_DEFAULTS[d])
    f = FIELDS[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if per_dataset or default is not None:
        return f" [default: {per_dataset or default}]"
    return ""  # its help text says what unset means


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """A ``--key`` flag for every run setting."""
    group = parser.add_argument_group("run settings (default: the config file, then Table 6)")
    for name in FIELDS:
        kind = {"nargs": "+", "type": functools.partial(_list_part, name)} if name in LISTS \
            else {"type": _value}
        _add_flag(group, f"--{name}", **kind, default=None, metavar="V",
                  help=FIELDS[name].metadata["help"] + _default(name))


def _overrides(args: argparse.Namespace) -> dict:
    """The run settings given as flags; a list flag's words joined into one list."""
    values = {name: getattr(args, name) for name in FIELDS if getattr(args, name) is not None}
    return {name: [item for part in v for item in part] if name in LISTS else v
            for name, v in values.items()}


def _set_threads(threads: int) -> None:
    if threads:
        from dmaml.engines import set_threads

        set_threads(threads)


def cmd_train(args: argparse.Namespace) -> int:
    from dmaml import config

    cfg = config.load(args.config, _overrides(args))
    run_lock.check(args.out)  # a second writer stops now, not after TensorFlow's start-up
    log.info("%s: %s; starting TensorFlow", args.out, config.describe(cfg))
    from dmaml.learner import Learner  # imports TensorFlow: seconds

    _set_threads(cfg.threads)
    try:
        Learner(cfg, args.out).train()
    except TrainingDiverged as e:
        if not args.diverged_ok:
            raise
        log.error("%s", e)
        log.warning("--diverged-ok: exiting 0; run.json records the divergence for the tables")
        return 0
    log.info("done: %s", args.out)
    return 0


def _add_train_command(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train one DMAML run into a run folder (resumes if it holds a checkpoint)",
        description="Train one DMAML run. Settings come from --config, then flags; unset ones take "
                    "the paper's Table 6 value for the dataset. Writes config.yaml, run.json, "
                    "metrics.csv, test.csv and checkpoints/ into --out; started again on the "
                    "same --out, it resumes from the last checkpoint."
                    + _spelling("--steps-per-run", "--steps_per_run"))
    train.add_argument("--config", type=Path, help="run config YAML (keys as the flags below)")
    train.add_argument("--out", type=Path, required=True, help="run folder")
    _add_flag(train, "--diverged-ok", action="store_true",
              help="exit 0 when the run diverges (run.json says so and the tables mark "
                   "it), so that a workflow goes on to report the other runs")
    add_run_flags(train)
    train.set_defaults(func=cmd_train)


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = Path(args.run)
    config_file = run_folder.config_file(run)  # before TensorFlow loads
    path = run_folder.checkpoint_file(run, args.step)
    from dmaml import checkpoint

    theta = checkpoint.unpack("theta", checkpoint.load(
        path, fix="evaluate another kept step with --step, or train the run again into a new "
                  "--out" if args.step is not None else "evaluate a kept step with --step"))

    from dmaml import config, models
    from dmaml.evaluate import Evaluator
    from dmaml.tasks import make_sampler

    cfg = config.load(config_file,
                      {k: v for k, v in (("test_tasks", args.test_tasks),
                                         ("eval_inner_steps", args.eval_inner_steps)) if v})
    _set_threads(cfg.threads)
    model = models.for_config(cfg)
    shots = args.shots or cfg.shots
    if args.extrapolate:
        _extrapolate(args.extrapolate, cfg, model, theta, shots, run)
        return 0
    evaluator = Evaluator(model, make_sampler(cfg, args.split, shots), args.split,
                          cfg.test_tasks, cfg.eval_seed, cfg.alpha, cfg.eval_inner_steps)
    score = evaluator(theta)
    result = {"run": str(run), "checkpoint": path.name, "split": args.split, "shots": shots,
              "eval_inner_steps": cfg.eval_inner_steps,
              "metric": "accuracy" if model.classification else "mse", **dataclasses.asdict(score)}
    print(json.dumps(result))
    if args.out:
        atomic.write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


def _add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="evaluate a saved checkpoint on fixed test tasks",
                        description="Adapt a run's saved parameters on fixed test tasks and print "
                                    "mean and 95% interval as one JSON line."
                                    + _spelling("--test-tasks", "--test_tasks"))
    ev.add_argument("--run", required=True, help="run folder written by `dmaml train`")
    ev.add_argument("--step", type=int, help="checkpoint step (default: the latest state)")
    _add_flag(ev, "--test_tasks", type=int, help="number of tasks (default: the run's)")
    ev.add_argument("--shots", type=int, help="support examples (sine: points), e.g. Table 1's K")
    _add_flag(ev, "--eval_inner_steps", type=int, help="adaptation steps (default: the run's)")
    ev.add_argument("--split", default="test", choices=["val", "test"])
    ev.add_argument("--out", type=Path, help="also write the result to this JSON file")
    ev.add_argument("--extrapolate", type=Path, metavar="CSV",
                    help="sine: instead of testing, write Figure 2's predictions (adapted on x in "
                         "[-5, 0]) to CSV")
    ev.set_defaults(func=cmd_evaluate)


def _extrapolate(out: Path, cfg, model, theta, shots: int, run: Path) -> None:
    """Figure 2's curve of a sine run, as CSV."""
    import pandas as pd

    from dmaml.evaluate import extrapolation

    if cfg.dataset != "sine":
        raise ConfigError("--extrapolate: only sine runs can be extrapolated (Figure 2)")
    curve = extrapolation(model, theta, shots, cfg.alpha, cfg.eval_inner_steps, cfg.eval_seed)
    frame = pd.concat([pd.DataFrame({k: curve[k] for k in ("x", "y_true", "y_pred")}),
                       pd.DataFrame({k: curve[k] for k in ("support_x", "support_y")})], axis=1)
    frame = frame.assign(run=str(run), workers=cfg.workers, seed=cfg.seed,
                         inner_steps=cfg.eval_inner_steps)
    atomic.write_text(out, frame.to_csv(index=False))


TABLES = {"checkpoints": ("step", "checkpoint_table"), "shots": ("K", "shots_table")}
FIGURES = {"workers": "workers_figure", "steps_per_run": "steps_per_run_figure",
           "tasks": "tasks_figure", "split": "split_figure", "extrapolation": "extrapolation_figure",
           "workers_wall": "workers_wall_figure", "tasks_wall": "tasks_wall_figure",
           "merge": "figure7.merge_figure"}  # module figures unless named


def cmd_table(args: argparse.Namespace) -> int:
    from dmaml.report import tables

    column, builder = TABLES[args.kind]
    table, runs = getattr(tables, builder)(args.inputs)
    if args.paper or args.paper_table:
        from dmaml.report import paper

        if not (args.paper and args.paper_table):
            raise ConfigError("--paper CSV and --paper-table NAME go together; give both")
        table = paper.compare(table, paper.load_paper(args.paper), args.paper_table)
    tables.write(table, column, args.title, runs, args.out)
    log.info("wrote %s and its .md and .html twins", args.out)
    return 0


def _add_table_command(sub: argparse._SubParsersAction) -> None:
    table = sub.add_parser("table", help="make one of the paper's tables from run folders",
                           description="checkpoints: Tables 2-5 from run folders (test.csv at each "
                                       "checkpoint step); shots: Table 1 from `dmaml evaluate "
                                       "--out` files. Writes OUT (CSV) and its Markdown and HTML twins.")
    table.add_argument("kind", choices=sorted(TABLES))
    table.add_argument("inputs", nargs="+", help="run folders (checkpoints) or JSON files (shots)")
    table.add_argument("--out", type=Path, required=True, help="CSV file to write")
    table.add_argument("--title", default="DMAML test results", help="title of the Markdown table")
    table.add_argument("--paper", type=Path, metavar="CSV",
                       help="the paper's values (workflow/paper/tables.csv): show each cell beside "
                            "the paper's, with the difference and a verdict")
    _add_flag(table, "--paper-table", metavar="NAME",
              help="the paper's table to compare with (table1 ... table5); needs --paper")
    table.set_defaults(func=cmd_table)


def cmd_figure(args: argparse.Namespace) -> int:
    module, _, name = FIGURES[args.kind].rpartition(".")
    draw = getattr(importlib.import_module(f"dmaml.report.{module or 'figures'}"), name)
    extra = {"max_step": args.max_step} if args.max_step and args.kind == "workers" else {}
    draw(args.inputs, args.out, **extra)
    log.info("wrote %s.{png,pdf,txt}", args.out.with_suffix(""))
    return 0


def _add_figure_command(sub: argparse._SubParsersAction) -> None:
    figure = sub.add_parser("figure", help="make one of the paper's figures from run folders",
                            description="workers: Figure 3; steps_per_run: Figure 4; tasks: "
                                        "Figure 5; split: Figure 6; workers_wall, tasks_wall: "
                                        "Figures 3 and 5 against measured seconds, with a table "
                                        "of seconds per step (.csv, .md); merge: Figure 7, "
                                        "validation by merge strategy (inputs: run folders); "
                                        "extrapolation: Figure 2 (inputs: `dmaml evaluate "
                                        "--extrapolate` CSVs). Writes OUT as .png, .pdf and .txt."
                                        + _spelling("--max-step", "--max_step"))
    figure.add_argument("kind", choices=sorted(FIGURES))
    figure.add_argument("inputs", nargs="+", help="run folders or prediction CSVs")
    figure.add_argument("--out", type=Path, required=True, help="output path (suffix ignored)")
    _add_flag(figure, "--max_step", type=int, default=0,
              help="workers: last MAML step shown (0: 1000, as in the paper)")
    figure.set_defaults(func=cmd_figure)


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it rejects unknown flags itself, so the error shows its own usage
    (argparse leaves them to the top-level parser, whose usage does not help)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def _spelling(dashed: str, underscored: str) -> str:
    """The --help sentence saying that a command's flags take ``-`` or ``_``."""
    return f" Flags may be spelt with - or _ ({dashed} is {underscored})."


def build_parser() -> argparse.ArgumentParser:
    """The ``dmaml`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="dmaml", description="Distributed MAML (DMAML): train, evaluate, prepare data.")
    parser.add_argument("--version", action="version", version=f"dmaml {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    for add in (_add_train_command, _add_evaluate_command, _add_table_command, _add_figure_command,
                add_data_commands, add_bench_command, add_plan_command, add_status_command):
        add(sub)  # in the order --help lists them
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dmaml`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        log.warning("%s", e)
        return 128 + e.signum  # as the shell reports a process the signal ended
    except KeyboardInterrupt:  # before a run's own handler is installed (loading, set-up)
        log.warning("interrupted")
        return 130
    except UserError as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())


