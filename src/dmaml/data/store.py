"""The HDF5 layout shared by the data stage (writer) and the task samplers (reader).

One file per dataset. Root attributes: ``layout_version`` (int, :data:`LAYOUT_VERSION`),
``dataset`` (name) and whatever provenance the writer records (source checksums, preprocessing
parameters, as JSON strings or scalars). One group per split (``train``, ``val``, ``test``):

- ``images``: uint8 ``[num_images, height, width, channels]``, stored class by class;
- ``offsets``: int64 ``[num_classes + 1]``; class ``c`` owns ``images[offsets[c]:offsets[c+1]]``;
- ``class_names``: UTF-8 strings ``[num_classes]`` (e.g. ``Latin/character01/rot090``).

Files are written to a temporary name beside the target and renamed when complete
(:func:`atomic_h5`), so a crash never leaves a half-written dataset under the final name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from dmaml import atomic
from dmaml.errors import DatasetError

LAYOUT_VERSION = 1
SPLITS = ("train", "val", "test")
# the files the workflow's data stage builds (workflow/rules/data.smk), from its folder
WORKFLOW_FILES = ("resources/omniglot.h5", "resources/miniimagenet.h5")


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Open ``path`` for writing under a temporary name; rename it into place on success only."""
    with atomic.replacing(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["layout_version"] = LAYOUT_VERSION
        yield f


def write_split(f: h5py.File, split: str, images: np.ndarray, offsets: np.ndarray,
                class_names: list[str]) -> None:
    """Write one split whose images are already in memory (small datasets and test fixtures)."""
    g = f.create_group(split)
    g.create_dataset("images", data=np.asarray(images, np.uint8), chunks=True)
    g.create_dataset("offsets", data=np.asarray(offsets, np.int64))
    g.create_dataset("class_names", data=np.array(class_names, dtype=h5py.string_dtype()))


class SplitWriter:
    """Write one split class by class without holding it in memory (resizable datasets).

    :meth:`append` adds a batch of images to the current class and :meth:`end_class` names it,
    so a caller that decodes a few hundred images at a time never holds more than that;
    :meth:`close` writes the offsets and class names. Produces the layout of :func:`write_split`.
    """

    def __init__(self, f: h5py.File, split: str, image_shape: tuple[int, int, int]) -> None:
        self.split, self.image_shape = split, tuple(image_shape)
        rows = max(1, (1 << 20) // int(np.prod(image_shape)))  # chunks of about 1 MiB
        self.group = f.create_group(split)
        self.images = self.group.create_dataset(
            "images", shape=(0, *self.image_shape), maxshape=(None, *self.image_shape),
            dtype=np.uint8, chunks=(rows, *self.image_shape))
        self.offsets = [0]
        self.class_names: list[str] = []

    def append(self, batch: np.ndarray) -> None:
        """Append uint8 images ``[n, *image_shape]`` to the class being written."""
        if batch.dtype != np.uint8 or batch.shape[1:] != self.image_shape:
            raise ValueError(f"split {self.split}: batch {batch.dtype} {batch.shape}, expected "
                             f"uint8 [n, {', '.join(map(str, self.image_shape))}]")
        start = len(self.images)
        self.images.resize(start + len(batch), axis=0)
        self.images[start:] = batch

    def end_class(self, name: str) -> None:
        """Close the class being written under ``name``; the next :meth:`append` starts another."""
        self.offsets.append(len(self.images))
        self.class_names.append(name)

    def add_class(self, name: str, images: np.ndarray) -> None:
        """Append a whole class at once."""
        self.append(images)
        self.end_class(name)

    def close(self) -> None:
        """Write the offsets and class names that complete the split."""
        self.group.create_dataset("offsets", data=np.asarray(self.offsets, np.int64))
        self.group.create_dataset("class_names",
                                  data=np.array(self.class_names, dtype=h5py.string_dtype()))


@dataclass(frozen=True)
class Split:
    """One split of a dataset file, loaded into memory (uint8) for fast task sampling."""

    images: np.ndarray  # uint8 [num_images, H, W, C]
    offsets: np.ndarray  # int64 [num_classes + 1]
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def _how_to_make(path: Path) -> str:
    """What to do about the missing dataset file ``path``: the workflow's data stage builds
    its own files (:data:`WORKFLOW_FILES`, from the current folder), the data commands any."""
    here = path.absolute()
    for own in WORKFLOW_FILES:
        if here == Path(own).absolute():
            return (f"build it with the data stage (`snakemake --cores 2 {own}` in the workflow's "
                    "folder) or set --data (`data:`) to an existing file")
    return (f"set --data (`data:`) to an existing file, or make this one with `dmaml "
            f"prepare-omniglot --out {path}` (`dmaml prepare-miniimagenet --source DIR --out "
            f"{path}` for miniImageNet)")


def read_split(path: str | os.PathLike, split: str) -> Split:
    """Load ``split`` of the dataset file ``path``, checking the layout with clear errors."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file; {_how_to_make(path)}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e}); delete it and rebuild it "
                           "with the data stage") from None
    with f:
        version = f.attrs.get("layout_version")
        if version != LAYOUT_VERSION:
            raise DatasetError(f"{path}: HDF5 layout version {version}, this dmaml reads version "
                               f"{LAYOUT_VERSION}; delete the file and rebuild it with the data stage")
        if split not in f:
            raise DatasetError(f"{path}: no group '{split}' (has {sorted(f.keys())}); "
                               "rebuild the file with the data stage")
        g = f[split]
        missing = [k for k in ("images", "offsets", "class_names") if k not in g]
        if missing:
            raise DatasetError(f"{path}: group '{split}' lacks {missing}; rebuild the file")
        try:
            images = g["images"][...]
            offsets = g["offsets"][...].astype(np.int64)
            names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                          for n in g["class_names"][...])
        except OSError as e:
            raise DatasetError(f"{path}: cannot read group '{split}' ({e}); the file is corrupt "
                               "or truncated: delete it and rebuild it with the data stage") from None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DatasetError(f"{path}: {split}/images must be uint8 [N, H, W, C], got "
                           f"{images.dtype} {images.shape}; rebuild the file")
    if (len(offsets) != len(names) + 1 or offsets[0] != 0 or offsets[-1] != len(images)
            or np.any(np.diff(offsets) < 0)):
        raise DatasetError(f"{path}: {split}/offsets do not match its images and class names; "
                           "rebuild the file")
    return Split(images, offsets, names)
