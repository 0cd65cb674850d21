"""dmaml.data.omniglot: the official zips into the HDF5 layout, on real and generated archives."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dmaml.cli import main as dmaml_cli
from dmaml.data.download import ChecksumError, DownloadError
from dmaml.data.omniglot import ArchiveError, list_characters, prepare_omniglot
from dmaml.data.store import SPLITS, read_split

from .conftest import OMNIGLOT_DATA, default_sigint, make_omniglot_source, make_omniglot_zip

needs_real = pytest.mark.skipif(not (OMNIGLOT_DATA / "images_background.zip").is_file(),
                                reason=f"real Omniglot zips not found in {OMNIGLOT_DATA}")


def characters(names) -> set[str]:
    """``Alphabet/characterNN`` of class names ``Alphabet/characterNN/rotDDD``."""
    return {name.rsplit("/", 1)[0] for name in names}


def assert_same_file(a: Path, b: Path) -> None:
    for split in SPLITS:
        x, y = read_split(a, split), read_split(b, split)
        assert x.class_names == y.class_names
        np.testing.assert_array_equal(x.offsets, y.offsets)
        np.testing.assert_array_equal(x.images, y.images)


def no_output(folder: Path) -> bool:
    """No HDF5 file, final or temporary, in ``folder``."""
    return not [p for p in folder.iterdir() if ".h5" in p.name]


@needs_real
def test_real_counts_shapes_and_names(omniglot_h5):
    expected = {"train": 3856, "val": 2636, "test": 2636}
    for split, count in expected.items():
        data = read_split(omniglot_h5, split)
        assert data.num_classes == count
        assert data.images.shape == (20 * count, 28, 28, 1) and data.images.dtype == np.uint8
        assert set(data.class_sizes()) == {20}
    train = read_split(omniglot_h5, "train")
    assert train.class_names[:4] == tuple(f"Alphabet_of_the_Magi/character01/rot{d:03d}"
                                          for d in (0, 90, 180, 270))
    assert len(characters(train.class_names)) == 964
    assert read_split(omniglot_h5, "val").class_names == read_split(omniglot_h5, "test").class_names


@needs_real
def test_real_rotations_split_polarity_and_provenance(omniglot_h5):
    train, test = read_split(omniglot_h5, "train"), read_split(omniglot_h5, "test")
    for c in range(0, train.num_classes, 4 * 97):  # every 97th character
        source = train.images[train.offsets[c]:train.offsets[c + 1]]
        for k in (1, 2, 3):
            rotated = train.images[train.offsets[c + k]:train.offsets[c + k + 1]]
            assert train.class_names[c + k].endswith(f"rot{90 * k:03d}")
            np.testing.assert_array_equal(rotated, np.rot90(source, k, axes=(1, 2)))
    assert not characters(train.class_names) & characters(test.class_names)
    alphabets = {name.split("/")[0] for name in train.class_names}
    assert len(alphabets) == 30 and not alphabets & {n.split("/")[0] for n in test.class_names}
    assert train.images.mean() > 200  # white background, dark strokes: the original polarity
    with h5py.File(omniglot_h5) as f:
        sources = json.loads(f.attrs["sources"])
        params = json.loads(f.attrs["preprocessing"])
    assert sources["images_background.zip"]["sha256"] == (
        "0742eb769ff12b215b6d00139389de8f05c29d35cc3f349b724567d0cf13ba7e")
    assert params["rotations"] == [0, 90, 180, 270] and params["image_size"] == [28, 28, 1]


@needs_real
def test_real_pixels_are_the_resized_drawings(omniglot_h5):
    """An image in the file is the Lanczos-resized 105x105 PNG from the zip, not inverted."""
    test = read_split(omniglot_h5, "test")
    c = test.class_names.index("Angelic/character01/rot000")
    with zipfile.ZipFile(OMNIGLOT_DATA / "images_evaluation.zip") as z:
        member = sorted(n for n in z.namelist()
                        if n.startswith("images_evaluation/Angelic/character01/"))[-1]
        drawing = Image.open(io.BytesIO(z.read(member)))
        expected = np.asarray(drawing.convert("L").resize((28, 28), Image.LANCZOS))
    np.testing.assert_array_equal(test.images[test.offsets[c + 1] - 1, ..., 0], expected)


@needs_real
def test_real_small_subsets():
    counts = {}
    for n in (1, 2):
        with zipfile.ZipFile(OMNIGLOT_DATA / f"images_background_small{n}.zip") as z:
            counts[n] = len(list_characters(z, f"images_background_small{n}"))
    assert counts == {1: 136, 2: 156}


def test_generated_counts_and_rotations(omniglot_source, tmp_path):
    out = prepare_omniglot(omniglot_source, tmp_path / "omniglot.h5")
    train, test = read_split(out, "train"), read_split(out, "test")
    assert (train.num_classes, test.num_classes) == (6 * 4, 4 * 4)
    assert train.images.shape == (24 * 20, 28, 28, 1) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images[train.offsets[1]:train.offsets[2]],
                                  np.rot90(train.images[:train.offsets[1]], 1, axes=(1, 2)))
    assert not characters(train.class_names) & characters(test.class_names)


def test_two_runs_write_identical_datasets(omniglot_source, tmp_path):
    a = prepare_omniglot(omniglot_source, tmp_path / "a.h5")
    b = prepare_omniglot(omniglot_source, tmp_path / "b.h5")
    assert_same_file(a, b)


def test_val_alphabets_held_out(omniglot_source, tmp_path):
    out = prepare_omniglot(omniglot_source, tmp_path / "omniglot.h5", val_alphabets=1)
    val, test = read_split(out, "val"), read_split(out, "test")
    assert {n.split("/")[0] for n in val.class_names} == {"Delta"}  # first in sorted order
    assert {n.split("/")[0] for n in test.class_names} == {"Gamma"}
    with pytest.raises(ValueError, match="val_alphabets must be in"):
        prepare_omniglot(omniglot_source, tmp_path / "bad.h5", val_alphabets=2)
    assert not (tmp_path / "bad.h5").exists()


def test_tiny_fixture(tiny_omniglot_h5):
    sizes = {s: read_split(tiny_omniglot_h5, s).num_classes for s in SPLITS}
    assert sizes == {"train": 20, "val": 12, "test": 12}


def test_small_background_subset(tmp_path):
    make_omniglot_zip(tmp_path / "images_background_small1.zip", "images_background_small1",
                      ["Alpha"], 2)
    make_omniglot_zip(tmp_path / "images_evaluation.zip", "images_evaluation", ["Gamma"], 1)
    assert dmaml_cli(["prepare-omniglot", "--source", str(tmp_path), "--small", "1",
                     "--out", str(tmp_path / "small.h5")]) == 0
    assert read_split(tmp_path / "small.h5", "train").num_classes == 8


def test_strict_checksum_mismatch(omniglot_source, tmp_path):
    with pytest.raises(ChecksumError, match="differs from the pinned md5"):
        prepare_omniglot(omniglot_source, tmp_path / "omniglot.h5", strict=True)
    assert no_output(tmp_path)
    assert dmaml_cli(["prepare-omniglot", "--source", str(omniglot_source), "--strict",
                     "--out", str(tmp_path / "omniglot.h5")]) == 2
    assert no_output(tmp_path)


def test_missing_source(tmp_path):
    with pytest.raises(DownloadError, match="no such folder"):
        prepare_omniglot(tmp_path / "nowhere", tmp_path / "omniglot.h5")
    with pytest.raises(DownloadError, match="images_background.zip: no such file"):
        prepare_omniglot(tmp_path, tmp_path / "omniglot.h5")


def test_truncated_zip_then_rerun(omniglot_source, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(omniglot_source, source)
    whole = (source / "images_evaluation.zip").read_bytes()
    (source / "images_evaluation.zip").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ArchiveError, match="images_evaluation.zip: not a readable zip archive"):
        prepare_omniglot(source, tmp_path / "omniglot.h5")
    assert no_output(tmp_path)
    (source / "images_evaluation.zip").write_bytes(whole)
    assert read_split(prepare_omniglot(source, tmp_path / "omniglot.h5"), "test").num_classes == 16


def test_zip_without_the_top_folder(tmp_path):
    make_omniglot_source(tmp_path)
    make_omniglot_zip(tmp_path / "images_background.zip", "omniglot", ["Alpha"], 1)
    with pytest.raises(ArchiveError, match=r"no images under 'images_background/.*\['omniglot'\]"):
        prepare_omniglot(tmp_path, tmp_path / "omniglot.h5")
    assert no_output(tmp_path)


def test_image_of_wrong_size_fails_midway_and_leaves_nothing(tmp_path):
    """The bad image is in the evaluation zip, read after the whole train split was written."""
    make_omniglot_source(tmp_path)
    make_omniglot_zip(tmp_path / "images_evaluation.zip", "images_evaluation", ["Gamma"], 1,
                      size=100)
    with pytest.raises(ArchiveError, match=r"Gamma/character01/0001_01.png: image is 100x100"):
        prepare_omniglot(tmp_path, tmp_path / "omniglot.h5")
    assert no_output(tmp_path)


@needs_real
def test_interrupted_preprocessing_leaves_no_file_then_rerun(tmp_path):
    out = tmp_path / "omniglot.h5"
    command = [sys.executable, "-m", "dmaml.cli", "prepare-omniglot",
               "--source", str(OMNIGLOT_DATA), "--small", "1", "--out", str(out)]
    log = tmp_path.parent / f"{tmp_path.name}-stderr.txt"  # outside the folder checked below
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stderr=stderr, preexec_fn=default_sigint)
    deadline = time.monotonic() + 180  # the start (imports) alone takes tens of s on a loaded machine
    while not [p for p in tmp_path.iterdir() if ".tmp" in p.name]:  # writing has begun
        assert process.poll() is None, f"exit {process.returncode} before writing: {log.read_text()}"
        assert time.monotonic() < deadline, f"no temporary file in 180 s: {log.read_text()}"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(timeout=180) != 0, f"not interrupted: {log.read_text()[-2000:]}"
    assert no_output(tmp_path)
    assert subprocess.run(command, stderr=subprocess.DEVNULL).returncode == 0
    assert read_split(out, "train").num_classes == 136 * 4
