"""The data rules of the workflow, run by Snakemake on generated Omniglot zips in a copy of the
workflow (download -> preprocess -> resources/omniglot.h5), and the miniImageNet rule on generated
pickles and without a source."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmaml.data.store import read_split

from .conftest import ROOT, make_omniglot_source

pytest.importorskip("snakemake")


@pytest.fixture()
def workflow(tmp_path) -> Path:
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path)
    for name in ("workflow", "envs"):
        shutil.copytree(ROOT / name, tmp_path / name)
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


def test_miniimagenet_target(workflow):
    rng = np.random.default_rng(0)
    source = workflow / "source"
    source.mkdir()
    for s, split in enumerate(("train", "val", "test")):
        cache = {"image_data": rng.integers(0, 256, (6, 84, 84, 3), dtype=np.uint8),
                 "class_dict": {f"n0{s}000001": [0, 1, 2], f"n0{s}000002": [3, 4, 5]}}
        with open(source / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump(cache, f)
    done = snakemake(workflow, "resources/miniimagenet.h5", "--config",
                     f"miniimagenet={{source: {source}, aggregate_val_test: true}}")
    assert done.returncode == 0, done.stderr[-3000:]
    test = read_split(workflow / "resources" / "miniimagenet.h5", "test")
    assert test.class_names == ("n01000001", "n01000002", "n02000001", "n02000002")
