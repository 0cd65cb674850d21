"""miniImageNet: a user's local copy, in any of its three usual forms, into one HDF5 file.

There is no free direct download of miniImageNet (100 ImageNet classes x 600 images, the split
of Ravi & Larochelle 2017: 64 train, 16 val, 20 test classes). :func:`prepare_miniimagenet`
reads a local source in one of the forms it is shared in, detected by :func:`detect_form`:

- ``csv``: a folder ``images/`` and the split files ``train.csv``, ``val.csv``, ``test.csv``
  (header ``filename,label``) beside it;
- ``folders``: ``train/<wnid>/*.jpg``, ``val/<wnid>/*.jpg``, ``test/<wnid>/*.jpg``;
- ``pickles``: ``mini-imagenet-cache-{train,val,test}.pkl``, each a dict with ``image_data``
  (uint8 ``[N, 84, 84, 3]``) and ``class_dict`` (``{wnid: [indices]}``).

Images are converted to RGB and, when not already 84x84, resized with PIL's Lanczos filter
(aspect ratio not kept, as in the usual miniImageNet tools). Classes are named by their WordNet
id and written in sorted order; a class's images keep the order of the CSV rows, of the sorted
file names, or of ``class_dict``. Writing streams class by class in batches of
:data:`BATCH_IMAGES` decoded images. The pickle form is the exception that its format imposes:
one split's pickle is loaded whole (about 0.8 GB for ``train``), one split at a time; only load
pickles you trust.

With ``aggregate_val_test`` the ``test`` split holds the val classes followed by the test classes
(36), as the paper does for testing; ``val`` keeps the 16 val classes for validation.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dmaml.data.download import file_digests
from dmaml.data.store import SPLITS, DatasetError, SplitWriter, atomic_h5

log = logging.getLogger(__name__)

IMAGE_SIZE = 84
BATCH_IMAGES = 128
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PICKLE_NAME = "mini-imagenet-cache-{split}.pkl"

NO_SOURCE = (
    "no miniImageNet source is configured, and it has no free direct download: get it as the "
    "Ravi & Larochelle split CSVs (github.com/twitter/meta-learning-lstm, folder data/miniImagenet) "
    "plus the ImageNet images they name (image-net.org, after registering), or as the widely "
    "shared pickles mini-imagenet-cache-{train,val,test}.pkl; then set `miniimagenet: {source: "
    "PATH}` in config.yaml (or pass `--source PATH` to `dmaml prepare-miniimagenet`)")


class SourceError(DatasetError):
    """A miniImageNet source that is missing, of no known form, or inconsistent."""


def detect_form(root: str | os.PathLike) -> str:
    """The form of the source folder ``root``: ``"pickles"``, ``"csv"`` or ``"folders"``."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: no such folder; set `miniimagenet: {{source: PATH}}` to the "
                          "folder holding your copy of miniImageNet")
    pickles = [(root / PICKLE_NAME.format(split=s)).is_file() for s in SPLITS]
    if any(pickles):
        if not all(pickles):
            missing = [PICKLE_NAME.format(split=s) for s, ok in zip(SPLITS, pickles) if not ok]
            raise SourceError(f"{root}: pickle form, but {missing} missing; add them")
        return "pickles"
    if (root / "images").is_dir():
        missing = [f"{s}.csv" for s in SPLITS if not (root / f"{s}.csv").is_file()]
        if missing:
            raise SourceError(f"{root}: images/ form, but {missing} missing beside it; add the "
                              "split CSVs (github.com/twitter/meta-learning-lstm)")
        return "csv"
    if all((root / s).is_dir() for s in SPLITS):
        return "folders"
    raise SourceError(f"{root}: not a miniImageNet source; expected images/ with train.csv, "
                      "val.csv, test.csv, or folders train/ val/ test/ of <wnid>/*.jpg, or "
                      f"{PICKLE_NAME.format(split='{train,val,test}')}")


def csv_classes(root: Path, split: str) -> dict[str, list[Path]]:
    """The image files of each class of ``split`` in the CSV form, checked to exist."""
    table = root / f"{split}.csv"
    classes: dict[str, list[Path]] = {}
    with open(table, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header != ["filename", "label"]:
            raise SourceError(f"{table}: header {header}, expected ['filename', 'label']; use the "
                              "split CSVs of Ravi & Larochelle")
        for line, row in enumerate(rows, start=2):
            if len(row) != 2:
                raise SourceError(f"{table}:{line}: expected 'filename,label', got {row}")
            path = root / "images" / row[0]
            if not path.is_file():
                raise SourceError(f"{table}:{line}: names {row[0]}, but {path} does not exist; "
                                  "complete images/ or use the CSVs that match it")
            classes.setdefault(row[1], []).append(path)
    return classes


def folder_classes(root: Path, split: str) -> dict[str, list[Path]]:
    """The image files of each class of ``split`` in the folder form (sorted by name)."""
    classes = {}
    for folder in sorted(p for p in (root / split).iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}); remove the "
                              "folder or fill it")
        classes[folder.name] = files
    return classes


def to_image_size(image: Image.Image) -> np.ndarray:
    """An RGB uint8 ``[84, 84, 3]`` array, resized with Lanczos when not already 84x84."""
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    return np.asarray(image, np.uint8)


def decode(path: Path) -> np.ndarray:
    """Decode one image file with :func:`to_image_size`, naming the file on failure."""
    try:
        with Image.open(path) as image:
            return to_image_size(image)
    except (UnidentifiedImageError, OSError) as e:
        raise SourceError(f"{path}: cannot decode image ({e}); replace or remove it") from None


def load_pickle(path: Path) -> tuple[np.ndarray, dict[str, list[int]]]:
    """The ``image_data`` and ``class_dict`` of one pickle, checked."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")  # latin1: pickles written by Python 2
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        raise SourceError(f"{path}: cannot read the pickle ({e}); fetch it again") from None
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= data.keys():
        raise SourceError(f"{path}: expected a dict with 'image_data' and 'class_dict'")
    images = np.asarray(data["image_data"])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise SourceError(f"{path}: image_data is {images.dtype} {images.shape}, expected uint8 "
                          "[N, H, W, 3]")
    classes = {str(k): [int(i) for i in v] for k, v in data["class_dict"].items()}
    if any(i < 0 or i >= len(images) for v in classes.values() for i in v):
        raise SourceError(f"{path}: class_dict indexes beyond image_data ({len(images)} images)")
    return images, classes


def batches_of_files(files: list[Path], pool: ThreadPoolExecutor) -> Iterator[np.ndarray]:
    """Decode ``files`` in batches of :data:`BATCH_IMAGES`, on the pool's threads."""
    for start in range(0, len(files), BATCH_IMAGES):
        yield np.stack(list(pool.map(decode, files[start:start + BATCH_IMAGES])))


def batches_of_array(images: np.ndarray, indices: list[int]) -> Iterator[np.ndarray]:
    """The images ``images[indices]`` in batches, resized when not 84x84."""
    for start in range(0, len(indices), BATCH_IMAGES):
        batch = images[indices[start:start + BATCH_IMAGES]]
        if batch.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
            batch = np.stack([to_image_size(Image.fromarray(image)) for image in batch])
        yield batch


def split_classes(root: Path, form: str, split: str, listed: dict[str, dict[str, list[Path]]],
                  pool: ThreadPoolExecutor) -> Iterator[tuple[str, Iterator[np.ndarray]]]:
    """Yield ``(wnid, batches)`` for the classes of ``split`` in sorted order.

    ``listed`` holds the files of each class for the ``csv`` and ``folders`` forms; the pickle
    form loads its split's pickle here and lets it go when the generator is exhausted.
    """
    if form == "pickles":
        images, class_dict = load_pickle(root / PICKLE_NAME.format(split=split))
        for wnid in sorted(class_dict):
            yield wnid, batches_of_array(images, class_dict[wnid])
    else:
        for wnid, paths in sorted(listed[split].items()):
            yield wnid, batches_of_files(paths, pool)


def prepare_miniimagenet(source: str | os.PathLike | None, out: str | os.PathLike, *,
                         aggregate_val_test: bool = False, threads: int | None = None) -> Path:
    """Build the miniImageNet HDF5 file ``out`` from the local copy in ``source``.

    Args:
        source: the folder of a local copy in any form of :func:`detect_form`; ``None`` or
            ``""`` fails at once with where to get miniImageNet and which setting to make.
        out: the HDF5 file to write (atomically: nothing is left under this name on error).
        aggregate_val_test: let ``test`` hold the val and the test classes (the paper).
        threads: image decoding threads (default: the number of CPUs).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Example:
        >>> prepare_miniimagenet("/data/miniimagenet", "resources/miniimagenet.h5",
        ...                      aggregate_val_test=True)  # doctest: +SKIP
    """
    if not source:
        raise SourceError(NO_SOURCE)
    root, out = Path(source), Path(out)
    form = detect_form(root)
    if form == "pickles":
        files = [root / PICKLE_NAME.format(split=s) for s in SPLITS]
        listed: dict[str, dict[str, list[Path]]] = {}
    else:
        files = [root / f"{s}.csv" for s in SPLITS] if form == "csv" else []
        read_classes = csv_classes if form == "csv" else folder_classes
        listed = {split: read_classes(root, split) for split in SPLITS}
        seen: dict[str, str] = {}
        for split, classes in listed.items():
            for wnid in classes:
                if wnid in seen:
                    raise SourceError(f"{root}: class {wnid} is in both {seen[wnid]} and {split}; "
                                      "the splits must not share classes")
                seen[wnid] = split
    targets = {"train": ("train",), "val": ("val", "test") if aggregate_val_test else ("val",),
               "test": ("test",)}
    sources = {"form": form, "path": str(root.resolve()),
               "files": {p.name: file_digests(p) for p in files}}
    params = {"image_size": [IMAGE_SIZE, IMAGE_SIZE, 3], "resample": "PIL.Image.LANCZOS",
              "color": "PIL convert('RGB')", "class_order": "sorted wnid",
              "aggregate_val_test": aggregate_val_test,
              "test": "val classes, then test classes" if aggregate_val_test else "test classes"}
    start = time.monotonic()
    with atomic_h5(out) as f, ThreadPoolExecutor(threads or os.cpu_count()) as pool:
        f.attrs["dataset"] = "miniimagenet"
        f.attrs["sources"] = json.dumps(sources, sort_keys=True)
        f.attrs["preprocessing"] = json.dumps(params, sort_keys=True)
        writers = {split: SplitWriter(f, split, (IMAGE_SIZE, IMAGE_SIZE, 3)) for split in SPLITS}
        for split in SPLITS:
            for wnid, batches in split_classes(root, form, split, listed, pool):
                for batch in batches:
                    for target in targets[split]:
                        writers[target].append(batch)
                for target in targets[split]:
                    writers[target].end_class(wnid)
            log.info("%s: %s split done, %.0f s", out, split, time.monotonic() - start)
        for writer in writers.values():
            writer.close()
    return out
