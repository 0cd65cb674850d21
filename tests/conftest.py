"""Shared fixtures: small real inputs (HDF5 files, run configs), never mocks."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from dmaml.data.store import atomic_h5, write_split

ROOT = Path(__file__).resolve().parents[1]


def default_sigint() -> None:
    """``preexec_fn`` of a subprocess that a test stops with SIGINT, as Ctrl-C would: a shell
    starts background jobs with SIGINT ignored, and a program that does not set its own handler
    (Python's default KeyboardInterrupt, Snakemake) keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
SHARED_DATA = ROOT.parent / "shared" / "data"

# --- core fixtures ---


def make_h5(path: Path, classes: int = 12, per_class: int = 6, size: int = 28,
            channels: int = 1, seed: int = 0, splits=("train", "val", "test")) -> Path:
    """A small dataset file in the real layout: each class a noisy copy of its own pattern, so a
    model can learn to tell classes apart from one example."""
    rng = np.random.default_rng(seed)
    with atomic_h5(path) as f:
        f.attrs["dataset"] = "synthetic"
        for split in splits:
            protos = rng.integers(0, 256, (classes, size, size, channels))
            noise = rng.integers(-30, 30, (classes, per_class, size, size, channels))
            images = np.clip(protos[:, None] + noise, 0, 255).astype(np.uint8)
            write_split(f, split, images.reshape(-1, size, size, channels),
                        np.arange(classes + 1) * per_class,
                        [f"{split}/class{c:03d}" for c in range(classes)])
    return path


@pytest.fixture(scope="session")
def synthetic_h5(tmp_path_factory) -> Path:
    """A 28x28x1 dataset file with 12 classes of 6 images per split."""
    return make_h5(tmp_path_factory.mktemp("data") / "synthetic.h5")


# --- data fixtures ---
# Real inputs from ../shared/data when that folder exists, generated ones in the official layouts
# otherwise. `omniglot_h5` (the full real set, preprocessed once per session) and
# `tiny_omniglot_h5` (generated, always available) are also used by the training tests.

OMNIGLOT_DATA = SHARED_DATA / "omniglot"
MINIIMAGENET_DATA = SHARED_DATA / "miniimagenet"


def draw_character(rng: np.random.Generator, strokes: np.ndarray, size: int = 105):
    """One 1-bit drawing (white background, black strokes) of a character given as polylines,
    each point jittered as a different drawer would."""
    from PIL import Image, ImageDraw

    image = Image.new("1", (size, size), 1)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        points = stroke + rng.normal(0, 2.0, stroke.shape)
        draw.line([tuple(p) for p in points], fill=0, width=int(rng.integers(2, 4)))
    return image


def make_omniglot_zip(path: Path, top: str, alphabets: list[str], characters: int = 3,
                      drawings: int = 20, seed: int = 0, size: int = 105) -> Path:
    """A zip in the official layout ``<top>/<Alphabet>/characterNN/NNNN_MM.png`` (1-bit PNGs)."""
    import io
    import zipfile

    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for alphabet in alphabets:
            for c in range(1, characters + 1):
                strokes = rng.uniform(15, size - 15, (int(rng.integers(1, 4)), 4, 2))
                for d in range(1, drawings + 1):
                    buf = io.BytesIO()
                    draw_character(rng, strokes, size).save(buf, "PNG")
                    z.writestr(f"{top}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png",
                               buf.getvalue())
    return path


def make_omniglot_source(folder: Path, background_characters: int = 3,
                         evaluation_characters: int = 2) -> Path:
    """A folder with generated images_background.zip (2 alphabets) and images_evaluation.zip
    (2 alphabets), the names of the official files (so their checksums differ from the pins)."""
    folder.mkdir(parents=True, exist_ok=True)
    make_omniglot_zip(folder / "images_background.zip", "images_background",
                      ["Alpha", "Beta"], background_characters, seed=1)
    make_omniglot_zip(folder / "images_evaluation.zip", "images_evaluation",
                      ["Gamma", "Delta"], evaluation_characters, seed=2)
    return folder


@pytest.fixture(scope="session")
def omniglot_source(tmp_path_factory) -> Path:
    """A folder of small generated Omniglot zips (background 6 characters, evaluation 4)."""
    return make_omniglot_source(tmp_path_factory.mktemp("omniglot_source"))


@pytest.fixture(scope="session")
def omniglot_h5(tmp_path_factory) -> Path:
    """The full real Omniglot (../shared/data/omniglot) preprocessed once per session: 3,856
    train and 2,636 val = test classes of 20 images, uint8 [N, 28, 28, 1]."""
    if not (OMNIGLOT_DATA / "images_background.zip").is_file():
        pytest.skip(f"real Omniglot zips not found in {OMNIGLOT_DATA}")
    from dmaml.data.omniglot import prepare_omniglot

    return prepare_omniglot(OMNIGLOT_DATA, tmp_path_factory.mktemp("omniglot") / "omniglot.h5")


@pytest.fixture(scope="session")
def tiny_omniglot_h5(tmp_path_factory) -> Path:
    """A generated Omniglot file built by the real pipeline: 20 train classes (5 characters x 4
    rotations), 12 val and 12 test classes (one evaluation alphabet each), 20 images 28x28x1."""
    from dmaml.data.omniglot import prepare_omniglot

    folder = tmp_path_factory.mktemp("tiny_omniglot")
    make_omniglot_zip(folder / "images_background.zip", "images_background", ["Alpha"], 5, seed=3)
    make_omniglot_zip(folder / "images_evaluation.zip", "images_evaluation", ["Gamma", "Delta"],
                      3, seed=4)
    return prepare_omniglot(folder, folder / "omniglot.h5", val_alphabets=1)


# --- SLURM fixture ---


@pytest.fixture(scope="module")
def slurm_cluster():
    """A private one-node SLURM cluster (tests/slurm/local_cluster.py; one at a time), skipped
    with the reason where this machine cannot run one."""
    from .slurm.local_cluster import (
        ClusterUnavailable,
        LocalSlurm,
        install_packages,
        unavailable_reason,
    )

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        install_packages()
        local = LocalSlurm()
        local.start()
    except ClusterUnavailable as e:
        pytest.skip(f"no local SLURM cluster: {e}")
    try:
        yield local
    finally:
        local.stop()
