"""The data rules of the workflow, run by Snakemake on generated Omniglot zips in a copy of the
workflow (download -> preprocess -> resources/omniglot.h5): checksum warnings on the terminal, a
new source re-running nothing, a truncated zip refused; and the miniImageNet rule on generated
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

from dmaml.data.download import OMNIGLOT_ARCHIVES
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


@pytest.mark.slow  # runs the data stage of the workflow
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
    for name in ("images_background.zip", "images_evaluation.zip"):  # once each, on the terminal
        assert done.stderr.count(f"differs from the pinned md5 {OMNIGLOT_ARCHIVES[name[:-4]].md5}"
                                 ) == 1, done.stderr[-3000:]


def fingerprint(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: its mtime (ns) and its bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # runs the data stage of the workflow
def test_new_source_reruns_nothing(workflow):
    """Zips fetched and checked once are kept whatever the source says later: another folder
    with the same zips, or a URL that cannot be reached (offline)."""
    source = make_omniglot_source(workflow / "source")
    done = snakemake(workflow, "resources/omniglot.h5", "--config", f"omniglot={{source: {source}}}")
    assert done.returncode == 0, done.stderr[-3000:]
    before = fingerprint(workflow / "resources")
    assert "omniglot.h5" in before and "omniglot/images_background.zip" in before
    shutil.copytree(source, workflow / "elsewhere")
    for other in (workflow / "elsewhere", "https://127.0.0.1:9/omniglot"):
        args = ("resources/omniglot.h5", "--config", f"omniglot={{source: {other}}}")
        planned = snakemake(workflow, "-n", *args)
        assert planned.returncode == 0 and "Nothing to be done" in planned.stdout, planned.stdout
        assert snakemake(workflow, *args).returncode == 0
    assert fingerprint(workflow / "resources") == before


@pytest.mark.slow  # runs the data stage of the workflow
def test_truncated_zip_is_refused_at_download(workflow):
    source = make_omniglot_source(workflow / "source")
    zip_path = source / "images_evaluation.zip"
    zip_path.write_bytes(zip_path.read_bytes()[: zip_path.stat().st_size // 2])  # a killed copy
    done = snakemake(workflow, "resources/omniglot.h5", "--config", f"omniglot={{source: {source}}}")
    assert done.returncode != 0 and "command exited with non-zero exit code" in done.stderr
    assert f"{zip_path}: not a complete zip archive" in done.stderr, done.stderr[-3000:]
    assert "copy it again" in done.stderr
    assert not list((workflow / "resources" / "omniglot").glob("*.zip"))


def test_miniimagenet_without_source_fails_at_once(workflow):
    done = snakemake(workflow, "-n", "resources/miniimagenet.h5")
    assert done.returncode != 0
    assert "miniimagenet: {source: PATH}" in done.stdout + done.stderr


@pytest.mark.slow  # runs the data stage of the workflow
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
