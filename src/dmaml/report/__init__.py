"""Tables and figures of the paper, made from run folders only (never from training code).

A run folder (written by ``dmaml train``) holds ``config.yaml``, ``metrics.csv`` and ``test.csv``;
:func:`load_runs` reads a set of them into one table with a row per run and its settings.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import pandas as pd
import yaml

from dmaml.config import FIELDS
from dmaml.errors import ReportError

SETTINGS = ["dataset", "ways", "shots", "queries", "workers", "steps_per_run", "tasks_per_step",
            "merge", "alpha", "beta", "outer_reduction", "first_order", "inner_steps",
            "eval_inner_steps", "batch_norm", "features", "adam_state", "pixels", "steps", "seed",
            "eval_seed", "test_tasks", "val_tasks"]
# settings newer than some run folders, which ran with their default (docs/design.md, "Choices
# the paper leaves open")
LATER = {k: FIELDS[k].default for k in ("batch_norm", "features", "adam_state", "pixels")}
# the settings that identify an experiment: every table's CSV and every figure's note name them
IDENTITY = ["dataset", "ways", "shots", "workers", "steps_per_run", "tasks_per_step"]
# the paper's symbols for them
SHORT = {"workers": "n", "shots": "k", "ways": "N", "steps_per_run": "m", "tasks_per_step": "t"}
# what run.json records of a run's machine and time (absent from runs made before it did)
TIMING = ["engine", "cpu", "cores", "threads", "step_s", "seconds_per_step", "wall_s"]

def strategy(cfg: dict) -> str:
    """A run's merge strategy as text: ``mean``, ``weighted T=0.3``, ``drop_worst 0.25``, followed
    by its worker schedule, if any (``mean; n=4 from step 1000``)."""
    merge = cfg.get("merge", "mean")
    text = {"weighted": f"weighted T={cfg.get('merge_temperature')}",
            "drop_worst": f"drop_worst {cfg.get('merge_drop')}"}.get(merge, merge)
    schedule = "".join(f"; n={n} from step {start}"
                       for start, n in sorted(cfg.get("worker_schedule") or []))
    return text + schedule


def load_runs(runs: list[str | Path]) -> pd.DataFrame:
    """One row per run folder: its settings, its merge :func:`strategy`, its path, its status and
    :data:`TIMING` (from run.json)."""
    rows = []
    for run in map(Path, runs):
        cfg_file = run / "config.yaml"
        if not cfg_file.exists():
            raise ReportError(f"{run}: not a run folder (no config.yaml); train it first")
        cfg = yaml.safe_load(cfg_file.read_text())
        info_file = run / "run.json"
        info = (yaml.safe_load(info_file.read_text()) or {}) if info_file.exists() else {}
        rows.append({**{k: cfg.get(k, LATER.get(k)) for k in SETTINGS}, "strategy": strategy(cfg),
                     "run": str(run),
                     "validation": validation_classes(cfg.get("dataset"), cfg.get("data")),
                     "status": info.get("status", "unknown"), **{k: info.get(k) for k in TIMING},
                     "code": f"dmaml {info.get('dmaml', '?')} (git {info.get('git', '?')})"})
    if not rows:
        raise ReportError("no run folders given")
    return pd.DataFrame(rows)


# where a run's validation tasks (which choose the seed of a table's row) come from
TEST_CLASSES = "the test classes"
HELD_OUT = "held-out alphabets"
AMONG_TEST = "the val classes, which are also tested on"
UNKNOWN = "not known"


def validation_classes(dataset: str | None, data: str | None) -> str:
    """Where the validation tasks of a run of ``dataset`` on the data file ``data`` come from, as
    its preprocessing recorded it: :data:`TEST_CLASSES` (Omniglot with ``val_alphabets: 0``, the
    paper's protocol), :data:`HELD_OUT`, :data:`AMONG_TEST` (miniImageNet with val and test
    classes aggregated for testing, the paper's), :data:`UNKNOWN` (no such file here); sine: its
    own task stream."""
    if dataset == "sine":
        return "sine tasks of their own stream"
    path = Path(data) if data else None
    if path is None or not path.is_file():
        return UNKNOWN
    with h5py.File(path, "r") as f:
        prep = json.loads(f.attrs.get("preprocessing", "{}"))
    if dataset == "omniglot":
        val = prep.get("val")
        return f"{len(val)} {HELD_OUT}" if isinstance(val, list) else TEST_CLASSES
    return AMONG_TEST if prep.get("aggregate_val_test") else "the val classes"


ALTERNATIVE = ("`omniglot: val_alphabets: N` holds N evaluation alphabets out of the test set "
               "for validation instead")


def selection_note(where: list[str] | set[str]) -> str:
    """What the seed choice of a table's rows looked at (``where``: the :func:`validation_classes`
    of its runs), for captions: with validation tasks from the test classes the choice has seen
    them; say so, and the alternative."""
    where = sorted(set(where))
    known = [w for w in where if w != UNKNOWN]
    text = "Each row's seed is chosen by its validation score"
    if known:
        text += f" on tasks from {' / '.join(known)}"
    if TEST_CLASSES in where:
        text += (" (Omniglot with `omniglot: val_alphabets: 0`, the paper's protocol): the seed "
                 f"choice has seen the test classes; {ALTERNATIVE}")
    elif UNKNOWN in where:
        text += (" (on which classes is not known here, without the data file: with `omniglot: "
                 "val_alphabets: 0`, the default and the paper's protocol, the test classes, so "
                 f"the seed choice has seen them; {ALTERNATIVE})")
    elif AMONG_TEST in where:
        text += " (the seed choice has seen some of the test classes, as the paper's)"
    return text + "."


def metrics(run: str | Path) -> pd.DataFrame:
    """The validation metrics of a run (one row per validation)."""
    return run_csv(Path(run) / "metrics.csv")


def run_csv(path: Path, key: tuple[str, ...] = ("step",)) -> pd.DataFrame:
    """A run folder's ``metrics.csv``, ``test.csv`` or ``worker_scores.csv`` (``key`` ``("step",
    "worker")``), checked: a :class:`ReportError` naming the file and its lines when a row cannot
    be read (a field too many or too few, text for a number) or a ``key`` comes twice (two
    writers, or a copy cut short), rather than a table built from them or pandas' own error."""
    again = f"delete the run folder {path.parent} and train it again"
    try:
        with open(path, newline="") as f:
            raw = list(csv.reader(f))
    except FileNotFoundError:
        raise ReportError(f"{path}: missing; the run folder is incomplete: train it again "
                          "(`dmaml train` on the folder resumes it)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ReportError(f"{path}: unreadable ({e}); {again}") from None
    if not raw or "step" not in raw[0]:
        raise ReportError(f"{path}: no header with a step column; {again}")
    frame = pd.DataFrame([r for r in raw[1:] if len(r) == len(raw[0])], columns=raw[0])
    frame.index = [i + 1 for i, r in enumerate(raw[1:], 1) if len(r) == len(raw[0])]  # lines
    frame = frame.mask(frame == "")  # empty fields: no value
    numbers = frame.drop(columns=["metric"], errors="ignore")
    parsed = numbers.apply(pd.to_numeric, errors="coerce")
    # a diverged run logs its loss as nan: a number, not a damaged row
    nan = numbers.apply(lambda column: column.str.strip().str.lower().eq("nan"))
    wrong = (numbers.notna() & parsed.isna() & ~nan).any(axis=1) | parsed["step"].isna()
    bad = sorted([i + 1 for i, r in enumerate(raw[1:], 1) if len(r) != len(raw[0])]
                 + list(frame.index[wrong]))
    if bad:
        raise ReportError(f"{path}: unreadable row(s) at line(s) {bad}; {again}")
    frame[parsed.columns] = parsed
    twice = frame.duplicated(list(key), keep=False)
    if twice.any():
        steps = sorted({int(s) for s in frame["step"][twice]})
        raise ReportError(f"{path}: step(s) {steps} come twice (lines {list(frame.index[twice])}): "
                          f"two trainings wrote this run folder at once; {again}")
    return frame.reset_index(drop=True)


def listing(values) -> str:
    """The distinct ``values``, sorted, as text for a caption: ``0, 1`` (not ``[0, 1]``)."""
    return ", ".join(map(str, sorted(set(values))))


# verdicts of a cell of ours beside the paper's (dmaml.report.paper.verdict); NONE: nothing compared
VERDICTS = ("=", "better", "worse")
NONE = "-"


def counts(verdicts: pd.Series) -> str:
    """How many cells of each verdict: ``12 of 18 cells compared: 8 =, 1 better, 3 worse``, and
    plainly so when none could be."""
    compared = verdicts[verdicts != NONE]
    if compared.empty:
        return f"0 of {len(verdicts)} cells compared: the paper has no value for any of them"
    return (f"{len(compared)} of {len(verdicts)} cells compared: "
            + ", ".join(f"{(compared == v).sum()} {v}" for v in VERDICTS))


def describe(runs: pd.DataFrame) -> str:
    """One line naming the settings shared by ``runs``, those that vary, and the code version."""
    fixed, varying = [], []
    for key in [*SETTINGS, "code"]:
        values = sorted({str(v) for v in runs[key]})
        (fixed if len(values) == 1 else varying).append(
            f"{key}={values[0]}" if len(values) == 1 else f"{key} in {{{', '.join(values)}}}")
    return "; ".join(fixed + varying)
