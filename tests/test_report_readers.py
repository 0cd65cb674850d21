"""Tables and figures never crash on what a writer left in a run folder: a step written twice or
a row that cannot be read stops them with one line naming the file and its lines, and the
previous outputs stay as they were."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest

from dmaml.cli import main
from dmaml.errors import ReportError
from dmaml.learner import Learner
from dmaml.report import figure7

from .test_learner import sine


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "sine-n1"
    Learner(sine(steps=20, eval_every=10, test_tasks=5, checkpoint_steps=[10, 20]), folder).train()
    return folder


def damaged(run, tmp_path, name: str, edit):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    lines = (copy / name).read_text().splitlines(keepends=True)
    (copy / name).write_text("".join(edit(lines)))
    return copy


@pytest.mark.parametrize("name, edit, message", [
    # two writers: a step's row twice (the test.csv ended with step 200 twice)
    ("test.csv", lambda lines: [*lines, lines[-1]], r"step\(s\) \[20\] come twice \(lines \[3, 4\]\)"),
    ("metrics.csv", lambda lines: [lines[0], lines[1], *lines[1:]],
     r"step\(s\) \[10\] come twice \(lines \[2, 3\]\)"),
    # a row cut short by a full disk or a killed copy
    ("test.csv", lambda lines: [*lines[:-1], lines[-1][:4] + "\n"],
     r"unreadable row\(s\) at line\(s\) \[3\]"),
    ("metrics.csv", lambda lines: [*lines, "1,2,3,4,5,6,7,8,9,10\n"],
     r"unreadable row\(s\) at line\(s\) \[4\]"),
    ("test.csv", lambda lines: [*lines[:-1], lines[-1].replace("mse,", "mse,x")],
     r"unreadable row\(s\) at line\(s\) \[3\]"),
])
def test_a_damaged_run_csv_is_one_line_and_the_old_table_stays(run, tmp_path, caplog, name, edit,
                                                                message):
    copy = damaged(run, tmp_path, name, edit)
    out = tmp_path / "table.csv"
    assert main(["table", "checkpoints", str(run), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.glob("table.*")}
    caplog.clear()
    assert main(["table", "checkpoints", str(copy), "--out", str(out)]) == 2
    assert main(["figure", "workers", str(copy), "--out", str(tmp_path / "fig.png")]) == (
        2 if name == "metrics.csv" else 0)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors and all("\n" not in e for e in errors)
    assert errors[0].startswith(f"{copy / name}: ")
    assert re.search(message, errors[0]), errors[0]
    assert "delete the run folder" in errors[0] or "train it again" in errors[0]
    assert {p.name: p.read_bytes() for p in tmp_path.glob("table.*")} == before


def test_a_diverged_runs_nan_loss_is_a_number_not_a_damaged_row(run, tmp_path):
    """A run that diverged logs its loss as ``nan``; the reader keeps that row as a number."""
    from dmaml.report import run_csv

    copy = damaged(run, tmp_path, "metrics.csv",
                   lambda lines: [lines[0], re.sub(r"^(\d+,\d+,\d+,[^,]+),[^,]+,", r"\1,nan,",
                                                   lines[1]), *lines[2:]])
    assert ",nan," in (copy / "metrics.csv").read_text()
    frame = run_csv(copy / "metrics.csv")
    assert frame["train_loss"].isna().iloc[0] and frame["step"].tolist() == [10, 20]


def test_a_damaged_worker_scores_file_is_one_line(tmp_path):
    """Figure 7's lower panels read worker_scores.csv with the same checks: one row per step and
    worker; a row written twice names the file and its lines."""
    run = tmp_path / "run"
    run.mkdir()
    rows = "step,worker,score,weight\n1,0,0.5,0.6\n1,1,0.7,0.4\n2,0,0.4,0.5\n2,1,0.6,0.5\n"
    (run / "worker_scores.csv").write_text(rows)
    runs = pd.DataFrame({"workers": [2], "line": ["weighted T=1.0"], "run": [str(run)]})
    spread = figure7.probe_spreads(runs)[2]["weighted T=1.0"]
    assert spread.round(6).tolist() == [0.2, 0.2]
    (run / "worker_scores.csv").write_text(rows + "2,1,0.6,0.5\n")
    with pytest.raises(ReportError, match=r"worker_scores.csv: step\(s\) \[2\] come twice "
                                          r"\(lines \[5, 6\]\)"):
        figure7.probe_spreads(runs)
