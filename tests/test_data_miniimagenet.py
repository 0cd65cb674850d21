"""dmaml.data.miniimagenet: the three source forms, resizing, aggregation and bad input.

The sources are built from the real ImageNet photos and split CSVs of ../shared/data/miniimagenet
when present (random crops of each class's photo, saved as JPEGs of various sizes under the
file names of the real CSVs), from generated images otherwise.
"""

from __future__ import annotations

import csv
import json
import logging
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dmaml.cli import main as dmaml_cli
from dmaml.data.miniimagenet import (
    NO_SOURCE,
    SourceError,
    detect_form,
    prepare_miniimagenet,
)
from dmaml.data.store import SPLITS, DatasetError, read_split
from dmaml.tasks import FewShotSampler

from .conftest import MINIIMAGENET_DATA

CLASSES = {"train": 3, "val": 2, "test": 2}
IMAGES = 6


def real_rows() -> dict[str, dict[str, list[str]]] | None:
    """The first rows of the first classes of each real split CSV: {split: {wnid: [files]}}."""
    if not (MINIIMAGENET_DATA / "imagenet-samples" / "index.csv").is_file():
        return None
    rows: dict[str, dict[str, list[str]]] = {}
    for split in SPLITS:
        classes: dict[str, list[str]] = {}
        with open(MINIIMAGENET_DATA / f"{split}.csv") as f:
            for row in csv.DictReader(f):
                files = classes.setdefault(row["label"], [])
                if len(files) < IMAGES:
                    files.append(row["filename"])
        rows[split] = dict(list(classes.items())[:CLASSES[split]])
    return rows


def class_photo(wnid: str, rng: np.random.Generator) -> Image.Image:
    """The real photo of class ``wnid``, or a generated smooth colour image."""
    real = sorted((MINIIMAGENET_DATA / "imagenet-samples" / "original").glob(f"{wnid}_*"))
    if real:
        with Image.open(real[0]) as photo:
            photo = photo.convert("RGB")
            photo.thumbnail((256, 256))
            return photo
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((240, 180))


def variant(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop of ``photo``, sometimes mirrored, at a size other than 84x84."""
    w, h = photo.size
    cw, ch = int(w * rng.uniform(0.6, 0.9)), int(h * rng.uniform(0.6, 0.9))
    x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
    image = photo.crop((x, y, x + cw, y + ch)).resize(tuple(rng.integers(90, 140, 2)))
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def lanczos_84(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((84, 84), Image.LANCZOS))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The same images in the three forms: {"csv": ..., "folders": ..., "pickles": ...}."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("miniimagenet")
    rows = real_rows() or {
        split: {f"n{9000000 + 100 * s + c:08d}": [f"n{9000000 + 100 * s + c:08d}{i:08d}.jpg"
                                                    for i in range(IMAGES)]
                for c in range(CLASSES[split])}
        for s, split in enumerate(SPLITS)}
    (root / "csv" / "images").mkdir(parents=True)
    for split, classes in rows.items():
        with open(root / "csv" / f"{split}.csv", "w") as f:
            f.write("filename,label\n")
            for wnid, files in classes.items():
                photo = class_photo(wnid, rng)
                (root / "folders" / split / wnid).mkdir(parents=True)
                for name in files:
                    variant(photo, rng).save(root / "csv" / "images" / name, quality=90)
                    shutil.copy(root / "csv" / "images" / name, root / "folders" / split / wnid)
                    f.write(f"{name},{wnid}\n")
        files = [(wnid, name) for wnid, names in classes.items() for name in names]
        cache = {"image_data": np.stack([lanczos_84(root / "csv" / "images" / n) for _, n in files]),
                 "class_dict": {wnid: [i for i, (w, _) in enumerate(files) if w == wnid]
                                for wnid in classes}}
        (root / "pickles").mkdir(exist_ok=True)
        with open(root / "pickles" / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump(cache, f)
    return {form: root / form for form in ("csv", "folders", "pickles")}


@pytest.fixture(scope="module")
def prepared(sources, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("prepared")
    return {form: prepare_miniimagenet(path, out / f"{form}.h5") for form, path in sources.items()}


def test_detect_form(sources, tmp_path):
    assert {form: detect_form(path) for form, path in sources.items()} == {
        "csv": "csv", "folders": "folders", "pickles": "pickles"}
    with pytest.raises(SourceError, match="not a miniImageNet source"):
        detect_form(tmp_path)


def test_splits_shapes_and_labels(prepared, sources):
    data = {split: read_split(prepared["csv"], split) for split in SPLITS}
    for split, d in data.items():
        assert d.num_classes == CLASSES[split] and set(d.class_sizes()) == {IMAGES}
        assert d.images.shape == (CLASSES[split] * IMAGES, 84, 84, 3)
        assert d.images.dtype == np.uint8
        with open(sources["csv"] / f"{split}.csv") as f:
            assert set(d.class_names) == {row["label"] for row in csv.DictReader(f)}
        assert list(d.class_names) == sorted(d.class_names)
    with h5py.File(prepared["csv"]) as f:
        assert json.loads(f.attrs["sources"])["form"] == "csv"
        assert json.loads(f.attrs["preprocessing"])["image_size"] == [84, 84, 3]


def test_images_are_the_resized_files_in_csv_order(prepared, sources):
    train = read_split(prepared["csv"], "train")
    with open(sources["csv"] / "train.csv") as f:
        first = next(csv.DictReader(f))["filename"]
    np.testing.assert_array_equal(train.images[0], lanczos_84(sources["csv"] / "images" / first))


def test_three_forms_write_the_same_dataset(prepared):
    for split in SPLITS:
        reference = read_split(prepared["csv"], split)
        for form in ("folders", "pickles"):
            other = read_split(prepared[form], split)
            assert other.class_names == reference.class_names
            np.testing.assert_array_equal(other.offsets, reference.offsets)
            np.testing.assert_array_equal(other.images, reference.images)


def test_two_runs_write_identical_datasets(prepared, sources, tmp_path):
    again = prepare_miniimagenet(sources["folders"], tmp_path / "again.h5", threads=1)
    for split in SPLITS:
        np.testing.assert_array_equal(read_split(again, split).images,
                                      read_split(prepared["folders"], split).images)


def test_aggregate_val_test(sources, prepared, tmp_path):
    out = prepare_miniimagenet(sources["pickles"], tmp_path / "agg.h5", aggregate_val_test=True)
    val, test = read_split(prepared["pickles"], "val"), read_split(prepared["pickles"], "test")
    agg_val, agg_test = read_split(out, "val"), read_split(out, "test")
    assert agg_val.class_names == val.class_names
    assert agg_test.class_names == val.class_names + test.class_names
    np.testing.assert_array_equal(agg_test.images, np.concatenate([val.images, test.images]))


def test_pickle_images_of_another_size_are_resized(tmp_path):
    rng = np.random.default_rng(1)
    for s, split in enumerate(SPLITS):
        cache = {"image_data": rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8),
                 "class_dict": {f"n0000000{s}": [0, 1, 2, 3]}}
        with open(tmp_path / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump(cache, f)
    train = read_split(prepare_miniimagenet(tmp_path, tmp_path / "out.h5"), "train")
    expected = np.asarray(Image.fromarray(cache["image_data"][0]).resize((84, 84), Image.LANCZOS))
    assert train.images.shape == (4, 84, 84, 3)
    test = read_split(tmp_path / "out.h5", "test")
    np.testing.assert_array_equal(test.images[0], expected)


def test_no_source(tmp_path, caplog):
    with pytest.raises(SourceError, match="miniimagenet: {source: PATH}"):
        prepare_miniimagenet(None, tmp_path / "out.h5")
    with caplog.at_level(logging.ERROR):
        assert dmaml_cli(["prepare-miniimagenet", "--out", str(tmp_path / "out.h5")]) == 2
    assert NO_SOURCE in caplog.text
    with pytest.raises(SourceError, match="no such folder"):
        prepare_miniimagenet(tmp_path / "nowhere", tmp_path / "out.h5")
    assert list(tmp_path.iterdir()) == []


def test_csv_naming_a_missing_file_then_rerun(sources, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(sources["csv"], source)
    with open(source / "val.csv") as f:
        name = list(csv.DictReader(f))[-1]["filename"]
    moved = (source / "images" / name).rename(tmp_path / name)
    with pytest.raises(SourceError, match=rf"val.csv:{1 + 2 * IMAGES}: names {name}"):
        prepare_miniimagenet(source, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
    moved.rename(source / "images" / name)
    assert read_split(prepare_miniimagenet(source, tmp_path / "out.h5"), "val").num_classes == 2


def test_undecodable_image_leaves_no_file(sources, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(sources["folders"], source)
    last = sorted((source / "test").glob("*/*.jpg"))[-1]
    last.write_bytes(b"not a jpeg")
    with pytest.raises(SourceError, match=f"{last.name}: cannot decode image"):
        prepare_miniimagenet(source, tmp_path / "out.h5")
    assert not [p for p in tmp_path.iterdir() if ".h5" in p.name]


def test_classes_shared_by_two_splits(sources, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(sources["folders"], source)
    wnid = next((source / "train").iterdir()).name
    shutil.copytree(source / "train" / wnid, source / "test" / wnid)
    with pytest.raises(SourceError, match=f"class {wnid} is in both train and test"):
        prepare_miniimagenet(source, tmp_path / "out.h5")


def test_class_smaller_than_shots_plus_queries(prepared):
    """Bad input found at sampling time: 5 shots + 15 queries from classes of 6 images."""
    with pytest.raises(DatasetError, match="fewer than shots \\+ queries"):
        FewShotSampler(str(prepared["csv"]), "train", ways=2, shots=5, queries=15)
    xs, ys, xq, yq = FewShotSampler(str(prepared["csv"]), "train", ways=3, shots=1,
                                    queries=5).sample(np.random.default_rng(0))
    assert xs.shape == (3, 84, 84, 3) and xq.shape == (15, 84, 84, 3) and xs.dtype == np.float32
