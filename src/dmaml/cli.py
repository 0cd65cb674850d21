"""The ``dmaml`` command line: train, evaluate, and the data-preparation commands.

Every run setting is a ``--key value`` flag named as in the config file (SPEC section 8); flags
override the file given with ``--config``. Values are read as YAML, so lists and booleans work:
``--checkpoint_steps [500,1000] --first_order true``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import yaml

from dmaml import __version__
from dmaml.bench import add_command as add_bench_command
from dmaml.config import FIELDS
from dmaml.data.cli import add_commands as add_data_commands
from dmaml.errors import ConfigError, TrainingDiverged, TrainingInterrupted, UserError

log = logging.getLogger("dmaml")

HELP = {
    "dataset": "sine | omniglot | miniimagenet",
    "data": "HDF5 file of the dataset (classification)",
    "ways": "N, classes per task",
    "shots": "k, support examples per class (sine: support points)",
    "queries": "k', query examples per class (sine: query points)",
    "workers": "n, DMAML workers",
    "steps_per_run": "m, consecutive MAML steps each worker makes per run",
    "tasks_per_step": "t, tasks per MAML step",
    "steps": "MAML steps of the central model (runs x m)",
    "merge": "mean | weighted | drop_worst",
    "merge_temperature": "T of the weighted merge, weights softmax(-loss/T)",
    "merge_drop": "workers left out by drop_worst",
    "worker_schedule": "[[from_step, n], ...]: fewer workers later in training",
    "alpha": "inner (adaptation) learning rate",
    "beta": "meta learning rate (Adam)",
    "inner_steps": "adaptation steps in training",
    "eval_inner_steps": "adaptation steps at validation and test",
    "first_order": "true: first-order MAML (no gradient through the inner updates)",
    "outer_reduction": "mean | sum of the task meta-gradients",
    "eval_every": "MAML steps between validations (a metrics.csv row each)",
    "val_tasks": "validation tasks",
    "test_tasks": "test tasks at each checkpoint step (0: no testing)",
    "checkpoint_steps": "steps whose parameters are kept and tested, e.g. [500,1000]",
    "checkpoint_every": "MAML steps between resume checkpoints (default eval_every)",
    "seed": "seed of initialisation and training tasks",
    "eval_seed": "seed of the validation and test tasks (same for every run)",
    "engine": "sequential | vectorized | processes | cluster",
    "threads": "TensorFlow intra-op threads (0: all cores)",
    "on_divergence": "stop | drop: what a non-finite worker does",
}


def _value(text: str):
    """A flag value: YAML (numbers, lists, booleans), with '1e-3'-style floats accepted."""
    try:
        return float(text) if "e" in text.lower() and text[0] in "0123456789.-+" else \
            yaml.safe_load(text)
    except ValueError:
        return yaml.safe_load(text)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """A ``--key`` flag for every run setting."""
    group = parser.add_argument_group("run settings (default: the config file, then Table 6)")
    for name, f in FIELDS.items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        group.add_argument(f"--{name}", type=_value, default=None, metavar="V",
                           help=f"{HELP.get(name, '')} [default: {default}]")


def _overrides(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in FIELDS if getattr(args, name) is not None}


def _set_threads(threads: int) -> None:
    if threads:
        from dmaml.engines import set_threads

        set_threads(threads)


def cmd_train(args: argparse.Namespace) -> int:
    from dmaml import config
    from dmaml.learner import Learner

    cfg = config.load(args.config, _overrides(args))
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dmaml import checkpoint, config, models
    from dmaml.evaluate import Evaluator
    from dmaml.tasks import make_sampler

    run = Path(args.run)
    cfg = config.load(run / "config.yaml",
                      {k: v for k, v in (("test_tasks", args.test_tasks),
                                         ("eval_inner_steps", args.eval_inner_steps)) if v})
    _set_threads(cfg.threads)
    name = f"step{args.step:06d}.npz" if args.step else "latest.npz"
    theta = checkpoint.unpack("theta", checkpoint.load(run / "checkpoints" / name))
    model = models.for_config(cfg)
    shots = args.shots or cfg.shots
    if args.extrapolate:
        _extrapolate(args.extrapolate, cfg, model, theta, shots, run)
        return 0
    evaluator = Evaluator(model, make_sampler(cfg, args.split, shots), args.split,
                          cfg.test_tasks, cfg.eval_seed, cfg.alpha, cfg.eval_inner_steps)
    score = evaluator(theta)
    result = {"run": str(run), "checkpoint": name, "split": args.split, "shots": shots,
              "eval_inner_steps": cfg.eval_inner_steps,
              "metric": "accuracy" if model.classification else "mse", **dataclasses.asdict(score)}
    print(json.dumps(result))
    if args.out:
        _write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


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
    _write_text(out, frame.to_csv(index=False))


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


TABLES = {"checkpoints": ("step", "checkpoint_table"), "shots": ("shots", "shots_table")}
FIGURES = {"workers": "workers_figure", "steps_per_run": "steps_per_run_figure",
           "tasks": "tasks_figure", "split": "split_figure", "extrapolation": "extrapolation_figure"}


def cmd_table(args: argparse.Namespace) -> int:
    from dmaml.report import tables

    column, builder = TABLES[args.kind]
    table, runs = getattr(tables, builder)(args.inputs)
    tables.write(table, column, args.title, runs, args.out)
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".md"))
    return 0


def cmd_figure(args: argparse.Namespace) -> int:
    from dmaml.report import figures

    extra = {"max_step": args.max_step} if args.max_step and args.kind == "workers" else {}
    getattr(figures, FIGURES[args.kind])(args.inputs, args.out, **extra)
    log.info("wrote %s.{png,pdf,txt}", args.out.with_suffix(""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmaml", description="Distributed MAML (DMAML): train, evaluate, prepare data.")
    parser.add_argument("--version", action="version", version=f"dmaml {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="train one DMAML run into a run folder (resumes if it holds a checkpoint)",
        description="Train one DMAML run. Settings come from --config, then flags; unset ones take "
                    "the paper's Table 6 value for the dataset. Writes config.yaml, run.json, "
                    "metrics.csv, test.csv and checkpoints/ into --out; started again on the "
                    "same --out, it resumes from the last checkpoint.")
    train.add_argument("--config", type=Path, help="run config YAML (keys as the flags below)")
    train.add_argument("--out", type=Path, required=True, help="run folder")
    train.add_argument("--diverged-ok", action="store_true",
                       help="exit 0 when the run diverges (run.json says so and the tables mark "
                            "it), so that a workflow goes on to report the other runs")
    add_run_flags(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="evaluate a saved checkpoint on fixed test tasks",
                        description="Adapt a run's saved parameters on fixed test tasks and print "
                                    "mean and 95%% interval as one JSON line.")
    ev.add_argument("--run", required=True, help="run folder written by `dmaml train`")
    ev.add_argument("--step", type=int, help="checkpoint step (default: the latest state)")
    ev.add_argument("--test_tasks", type=int, help="number of tasks (default: the run's)")
    ev.add_argument("--shots", type=int, help="support examples (sine: points), e.g. Table 1's K")
    ev.add_argument("--eval_inner_steps", type=int, help="adaptation steps (default: the run's)")
    ev.add_argument("--split", default="test", choices=["val", "test"])
    ev.add_argument("--out", type=Path, help="also write the result to this JSON file")
    ev.add_argument("--extrapolate", type=Path, metavar="CSV",
                    help="sine: instead of testing, write Figure 2's predictions (adapted on x in "
                         "[-5, 0]) to CSV")
    ev.set_defaults(func=cmd_evaluate)

    table = sub.add_parser("table", help="make one of the paper's tables from run folders",
                           description="checkpoints: Tables 2-5 from run folders (test.csv at each "
                                       "checkpoint step); shots: Table 1 from `dmaml evaluate "
                                       "--out` files. Writes OUT (CSV) and its Markdown twin.")
    table.add_argument("kind", choices=sorted(TABLES))
    table.add_argument("inputs", nargs="+", help="run folders (checkpoints) or JSON files (shots)")
    table.add_argument("--out", type=Path, required=True, help="CSV file to write")
    table.add_argument("--title", default="DMAML test results", help="title of the Markdown table")
    table.set_defaults(func=cmd_table)

    figure = sub.add_parser("figure", help="make one of the paper's figures from run folders",
                            description="workers: Figure 3; steps_per_run: Figure 4; tasks: "
                                        "Figure 5; split: Figure 6 (inputs: run folders); "
                                        "extrapolation: Figure 2 (inputs: `dmaml evaluate "
                                        "--extrapolate` CSVs). Writes OUT as .png, .pdf and .txt.")
    figure.add_argument("kind", choices=sorted(FIGURES))
    figure.add_argument("inputs", nargs="+", help="run folders or prediction CSVs")
    figure.add_argument("--out", type=Path, required=True, help="output path (suffix ignored)")
    figure.add_argument("--max_step", type=int, default=0,
                        help="workers: last MAML step shown (0: 1000, as in the paper)")
    figure.set_defaults(func=cmd_figure)

    add_data_commands(sub)
    add_bench_command(sub)
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
        return 143
    except UserError as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())


