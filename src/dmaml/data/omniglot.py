"""Omniglot: the official zips of drawings into one HDF5 file of 28x28 rotated-character classes.

Conventions (docs/design.md, "Data"; the split of Finn et al. 2017 and the paper):

- ``images_background.zip`` (30 alphabets, 964 characters) -> split ``train``;
  ``images_evaluation.zip`` (20 alphabets, 659 characters) -> split ``test``; split ``val`` holds
  the same classes as ``test`` (an HDF5 hard link to the same group: one copy on disk) unless
  ``val_alphabets`` > 0, in which case the first ``val_alphabets`` evaluation alphabets (in
  sorted order) form ``val`` and the others ``test``.
  The official small subsets (``images_background_small1.zip``, ``..._small2.zip``) can replace
  the full background set.
- Each character drawn at each of the rotations 0, 90, 180 and 270 degrees (counter-clockwise,
  :func:`numpy.rot90`) is a class named ``<Alphabet>/<characterNN>/rot<degrees:03d>``, e.g.
  ``Latin/character01/rot090``: 3,856 train and 2,636 test classes of 20 images each.
- Every 105x105 drawing is converted to 8-bit grayscale and resized to 28x28 with PIL's Lanczos
  filter (anti-aliased); the rotations are applied to the resized image, so a rotated class is
  exactly the rotation of its source. Pixel polarity is the original one (background 255,
  strokes 0). Images are stored uint8 ``[N, 28, 28, 1]`` in the layout of :mod:`dmaml.data.store`.
- Images are decoded straight from the zips, one character at a time, in sorted order, so two
  runs write identical datasets. The root attributes record the source checksums and these
  parameters as JSON (``sources``, ``preprocessing``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dmaml.data.download import OMNIGLOT_ARCHIVES, is_url, obtain
from dmaml.data.store import DatasetError, SplitWriter, atomic_h5
from dmaml.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE_SIZE = 105
IMAGE_SIZE = 28
ROTATIONS = (0, 90, 180, 270)
BACKGROUNDS = ("images_background", "images_background_small1", "images_background_small2")
EVALUATION = "images_evaluation"


class ArchiveError(DatasetError):
    """An Omniglot zip that is unreadable or does not have the official layout."""


@dataclass(frozen=True)
class Character:
    """One character of an archive: its alphabet, its folder name and its PNG members (sorted)."""

    alphabet: str
    name: str
    members: tuple[str, ...]


def open_archive(path: str | os.PathLike) -> zipfile.ZipFile:
    """Open a zip, turning an unreadable (e.g. truncated) file into an :class:`ArchiveError`."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"{path}: not a readable zip archive ({e}); the file is truncated or "
                           "corrupt: delete it and fetch it again") from None


def list_characters(archive: zipfile.ZipFile, top: str) -> list[Character]:
    """The characters of ``archive`` laid out as ``<top>/<Alphabet>/<characterNN>/*.png``."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name in archive.namelist():
        parts = name.split("/")
        if parts[0] == top and len(parts) == 4 and parts[3].lower().endswith(".png"):
            groups.setdefault((parts[1], parts[2]), []).append(name)
    if not groups:
        tops = sorted({name.split("/")[0] for name in archive.namelist()})[:5]
        raise ArchiveError(f"{archive.filename}: no images under '{top}/<Alphabet>/<character>/' "
                           f"(top-level entries: {tops}); this is not the official {top}.zip")
    return [Character(alphabet, character, tuple(sorted(members)))
            for (alphabet, character), members in sorted(groups.items())]


def load_character(archive: zipfile.ZipFile, character: Character) -> np.ndarray:
    """Decode and resize the drawings of ``character``: uint8 ``[n, 28, 28]``."""
    images = []
    for member in character.members:
        where = f"{archive.filename}:{member}"
        try:
            with Image.open(io.BytesIO(archive.read(member))) as image:
                if image.size != (SOURCE_SIZE, SOURCE_SIZE):
                    raise ArchiveError(f"{where}: image is {image.size[0]}x{image.size[1]}, "
                                       f"Omniglot drawings are {SOURCE_SIZE}x{SOURCE_SIZE}; "
                                       "use the official archive")
                small = image.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
        except (zipfile.BadZipFile, zlib.error, EOFError, UnidentifiedImageError, OSError) as e:
            raise ArchiveError(f"{where}: cannot decode ({e}); the archive is corrupt: delete it "
                               "and fetch it again") from None
        images.append(np.asarray(small, np.uint8))
    return np.stack(images)


def rotated_classes(archive: zipfile.ZipFile, characters: list[Character],
                    ) -> Iterator[tuple[Character, str, np.ndarray]]:
    """Yield ``(character, class name, images [n, 28, 28, 1])`` for every character x rotation."""
    for character in characters:
        images = load_character(archive, character)[..., None]
        for degrees in ROTATIONS:
            name = f"{character.alphabet}/{character.name}/rot{degrees:03d}"
            yield character, name, np.rot90(images, k=degrees // 90, axes=(1, 2))


def prepare_omniglot(source: str | os.PathLike, out: str | os.PathLike, *,
                     background: str = "images_background", val_alphabets: int = 0,
                     strict: bool = False, download_dir: str | os.PathLike | None = None,
                     timeout: float = 60.0) -> Path:
    """Build the Omniglot HDF5 file ``out`` from the official zips found in ``source``.

    Args:
        source: a folder holding the zips, or a URL prefix (``https://``, ``file://``) from which
            they are fetched into ``download_dir``.
        out: the HDF5 file to write (atomically: nothing is left under this name on error).
        background: which background archive makes the ``train`` split, one of
            :data:`BACKGROUNDS` (the full set or an official small subset).
        val_alphabets: 0 for ``val`` = ``test`` (the paper), or the number of evaluation
            alphabets held out from ``test`` for ``val``.
        strict: refuse archives whose checksum differs from the official one (otherwise a
            warning names both checksums).
        download_dir: where URL sources are fetched to (default: ``<out folder>/omniglot``).
        timeout: seconds before a stalled download fails.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Example:
        >>> prepare_omniglot("/data/omniglot", "resources/omniglot.h5")  # doctest: +SKIP
    """
    if background not in BACKGROUNDS:
        raise ConfigError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    out = Path(out)
    dest_dir = Path(download_dir or out.parent / "omniglot") if is_url(source) else Path(source)
    sources, paths = {}, {}
    for key in (background, EVALUATION):
        paths[key], digests = obtain(source, OMNIGLOT_ARCHIVES[key], dest_dir,
                                     strict=strict, timeout=timeout)
        sources[OMNIGLOT_ARCHIVES[key].filename] = digests
    start = time.monotonic()
    with open_archive(paths[background]) as bg, open_archive(paths[EVALUATION]) as ev:
        train_chars = list_characters(bg, background)
        eval_chars = list_characters(ev, EVALUATION)
        alphabets = sorted({c.alphabet for c in eval_chars})
        if not 0 <= val_alphabets < len(alphabets):
            raise ConfigError(f"val_alphabets must be in [0, {len(alphabets) - 1}] (the "
                              f"evaluation set has {len(alphabets)} alphabets), got {val_alphabets}")
        held_out = set(alphabets[:val_alphabets])
        params = {"image_size": [IMAGE_SIZE, IMAGE_SIZE, 1], "resample": "PIL.Image.LANCZOS",
                  "source_size": [SOURCE_SIZE, SOURCE_SIZE], "grayscale": "PIL convert('L')",
                  "polarity": "original (background 255, strokes 0)",
                  "rotations": list(ROTATIONS), "rotation": "counter-clockwise, numpy.rot90",
                  "train": background, "test": EVALUATION,
                  "val": sorted(held_out) if held_out else "same classes as test"}
        with atomic_h5(out) as f:
            f.attrs["dataset"] = "omniglot"
            f.attrs["sources"] = json.dumps(sources, sort_keys=True)
            f.attrs["preprocessing"] = json.dumps(params, sort_keys=True)
            shape = (IMAGE_SIZE, IMAGE_SIZE, 1)
            writers = {split: SplitWriter(f, split, shape)
                       for split in ("train", "val", "test") if split != "val" or held_out}
            for _, name, images in rotated_classes(bg, train_chars):
                writers["train"].add_class(name, images)
            for character, name, images in rotated_classes(ev, eval_chars):
                if character.alphabet in held_out:
                    writers["val"].add_class(name, images)
                else:
                    writers["test"].add_class(name, images)
            for writer in writers.values():
                writer.close()
            if not held_out:
                f["val"] = f["test"]  # a hard link: one copy of the images, two split names
            counts = {split: len(f[split]["class_names"]) for split in ("train", "val", "test")}
    log.info("%s: wrote %s classes in %.1f s", out, counts, time.monotonic() - start)
    return out
