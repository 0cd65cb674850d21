"""Every command README.md and docs/ show works today (a doc that drifts is a defect): each
`dmaml` line of a code block parses with the CLI's own parser, and each `snakemake` line
dry-runs in a copy of the workflow. Lines that need what a dry run cannot have are run for real
elsewhere: `--report` (built results; tests/test_report_workflow.py), `--profile slurm` (an
installed profile and a cluster; tests/test_slurm.py) and `--rulegraph` (tests/test_rulegraph.py).
"""

from __future__ import annotations

import re
import shlex

import pytest

from dmaml.cli import build_parser

from .conftest import ROOT
from .test_workflow import copy_workflow, snakemake

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
INDENTED = re.compile(r"^    ((?:dmaml|snakemake) .*)$", re.M)  # Markdown's indented code
ELSEWHERE = ("--report", "--profile", "--rulegraph")


def commands(program: str) -> list[tuple[str, list[str]]]:
    """(document, arguments) of each line of a code block in README.md and docs/ that runs
    ``program``; a shell comment and what follows a pipe are left out."""
    found = []
    for doc in DOCS:
        text = doc.read_text().replace("\\\n", " ")  # continued lines joined
        lines = [line for block in FENCED.findall(text) for line in block.splitlines()]
        for line in lines + INDENTED.findall(text):
            words = shlex.split(line.split(" | ")[0], comments=True)
            if words[:1] == [program]:
                found.append((doc.name, words[1:]))
    return found


def test_the_docs_show_commands_of_both_programs():
    assert len(commands("dmaml")) >= 5 and len(commands("snakemake")) >= 8


@pytest.mark.parametrize("doc, args", commands("dmaml"), ids=lambda x: " ".join(x) if
                         isinstance(x, list) else x)
def test_each_dmaml_command_of_the_docs_parses(doc, args, capsys):
    parser = build_parser()
    if "--help" in args:
        with pytest.raises(SystemExit) as done:
            parser.parse_args(args)
        assert done.value.code == 0 and "usage:" in capsys.readouterr().out
    else:
        parser.parse_args(args)  # argparse exits (2) with its message on a wrong flag


@pytest.mark.slow  # a dry run of the whole grid per command
def test_each_snakemake_command_of_the_docs_dry_runs(tmp_path):
    flow = copy_workflow(tmp_path / "flow")
    # the git-ignored preset docs/data.md tells an offline user to write
    (flow / "presets/offline.yaml").write_text(f"omniglot:\n  source: {tmp_path / 'omniglot'}\n")
    failed = []
    for doc, args in commands("snakemake"):
        if any(flag in args for flag in ELSEWHERE):
            continue
        done = snakemake(flow, "-n", *args, "--config", f"miniimagenet={{source: {tmp_path}}}",
                         timeout=600)
        if done.returncode != 0 or "Job stats:" not in done.stdout:
            failed.append(f"{doc}: snakemake {shlex.join(args)}\n{done.stderr[-1500:]}")
    assert not failed, "\n\n".join(failed)


@pytest.mark.slow  # a training of 200 steps (35 s on a loaded machine)
def test_the_readme_python_example_runs(tmp_path):
    """README's "From Python" block, run as written in a fresh process (sine: seconds)."""
    import subprocess
    import sys

    block = re.search(r"^## From Python\n+```python\n(.*?)^```", (ROOT / "README.md").read_text(),
                      re.S | re.M).group(1)
    done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mse" in done.stdout and (tmp_path / "runs/sine-n4/test.csv").is_file()
    assert "step 200/200" in done.stderr  # progress lines without any logging set up
