"""The data rules of the workflow, run by Snakemake on generated Omniglot zips in a copy of the
workflow (download -> preprocess -> resources/omniglot.h5), and the miniImageNet rule's refusal
without a source."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dmaml.data.store import read_split

from .conftest import ROOT, make_omniglot_source

pytest.importorskip("snakemake")


@pytest.fixture()
def workflow(tmp_path) -> Path:
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    return tmp_path


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=300)


def test_omniglot_target(workflow):
    source = make_omniglot_source(workflow / "source")
    done = snakemake(workflow, "resources/omniglot.h5", "--config",
                     f"omniglot={{source: {source.as_uri()}, val_alphabets: 1}}")
    assert done.returncode == 0, done.stderr[-3000:]
    out = workflow / "resources" / "omniglot.h5"
    assert {s: read_split(out, s).num_classes for s in ("train", "val", "test")} == {
        "train": 24, "val": 8, "test": 8}
    assert (workflow / "resources" / "omniglot" / "images_evaluation.zip").is_file()
    log = (workflow / "logs" / "download_omniglot" / "omniglot.log").read_text()
    assert "differs from the pinned md5" in log  # generated zips: accepted with a warning
    assert (workflow / "logs" / "preprocess_omniglot" / "omniglot.log").is_file()


def test_miniimagenet_without_source_fails_at_once(workflow):
    done = snakemake(workflow, "-n", "resources/miniimagenet.h5")
    assert done.returncode != 0
    assert "miniimagenet: {source: PATH}" in done.stdout + done.stderr
