"""Task samplers: sine regression and N-way k-shot classification over an HDF5 dataset.

A task is ``(x_support, y_support, x_query, y_query)`` as numpy arrays. Every task is a pure
function of a ``numpy.random.Generator``; :func:`task_rng` derives that generator from
``(seed, stream, worker, step)``, so a run's tasks need no saved RNG state to be reproduced and
evaluation tasks (stream ``VAL``/``TEST`` from a fixed evaluation seed) are the same for every run.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from dmaml.data.store import DatasetError, read_split

Task = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

# RNG streams (INIT: parameter initialisation; PROBE: the training-class tasks on which the
# weighted and drop_worst merges score the workers, see dmaml.merge)
TRAIN, VAL, TEST, INIT, PROBE = 0, 1, 2, 3, 4
STREAMS = {"train": TRAIN, "val": VAL, "test": TEST}


def task_rng(seed: int, stream: int, *indices: int) -> np.random.Generator:
    """An independent generator for ``(seed, stream, *indices)``, e.g. (seed, TRAIN, worker, step)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, *indices])))


class Sampler(Protocol):
    """What the learner needs from a task source."""

    def sample(self, rng: np.random.Generator) -> Task: ...


def stack(tasks: list[Task]) -> Task:
    """Stack tasks along a new leading task axis."""
    return tuple(np.stack(parts) for parts in zip(*tasks))  # type: ignore[return-value]


def sample_batch(sampler: Sampler, rng: np.random.Generator, n: int) -> Task:
    """``n`` tasks from ``rng``, stacked along a leading task axis."""
    return stack([sampler.sample(rng) for _ in range(n)])


class SineSampler:
    """y = A sin(x - b), A ~ U[0.1, 5], b ~ U[0, pi], x ~ U[-5, 5] (Finn et al. 2017)."""

    amplitude = (0.1, 5.0)
    phase = (0.0, math.pi)
    x_range = (-5.0, 5.0)

    def __init__(self, shots: int, queries: int, support_range: tuple[float, float] | None = None):
        """``support_range`` restricts the support points (Figure 2's extrapolation test)."""
        self.shots, self.queries = shots, queries
        self.support_range = support_range or self.x_range

    def function(self, rng: np.random.Generator) -> tuple[float, float]:
        """Amplitude and phase of a task."""
        return rng.uniform(*self.amplitude), rng.uniform(*self.phase)

    @staticmethod
    def points(rng: np.random.Generator, count: int, bounds: tuple[float, float]) -> np.ndarray:
        """``count`` inputs drawn uniformly from ``bounds``, shaped [count, 1]."""
        return rng.uniform(*bounds, size=(count, 1)).astype(np.float32)

    @staticmethod
    def curve(a: float, b: float, x: np.ndarray) -> np.ndarray:
        """y = a sin(x - b) in float32."""
        return (a * np.sin(x - b)).astype(np.float32)

    def sample(self, rng: np.random.Generator) -> Task:
        a, b = self.function(rng)
        xs = self.points(rng, self.shots, self.support_range)
        xq = self.points(rng, self.queries, self.x_range)
        return xs, self.curve(a, b, xs), xq, self.curve(a, b, xq)


class FewShotSampler:
    """N-way k-shot tasks from one split of a dataset file (layout: :mod:`dmaml.data.store`).

    The split is loaded into memory once (uint8); each task draws ``ways`` classes without
    replacement, then ``shots + queries`` distinct images of each. Labels 0..N-1 follow the random
    class order, so a label carries no information across tasks. Images are float32: ``pixels``
    ``unit`` in [0, 1] as stored (background 1), ``inverted`` 1 minus that (strokes 1, as
    cbfinn/maml reads Omniglot) or ``raw`` 0-255 (a pipeline that never scales them).
    """

    def __init__(self, path: str, split: str, ways: int, shots: int, queries: int,
                 pixels: str = "unit"):
        self.path, self.split, self.pixels = path, split, pixels
        self.ways, self.shots, self.queries = ways, shots, queries
        data = read_split(path, split)
        self.images, self.offsets, self.class_names = data.images, data.offsets, data.class_names
        self.sizes = data.class_sizes()
        check_fits(path, split, data.class_names, self.sizes, ways, shots, queries)

    def sample(self, rng: np.random.Generator) -> Task:
        classes = rng.choice(len(self.sizes), size=self.ways, replace=False)
        per_class = self.shots + self.queries
        index = np.stack([self.offsets[c] + rng.choice(self.sizes[c], per_class, replace=False)
                          for c in classes])  # [ways, shots + queries]
        labels = np.arange(self.ways, dtype=np.int32)
        support = index[:, :self.shots].reshape(-1)
        query = index[:, self.shots:].reshape(-1)
        return (self.scaled(self.images[support]), np.repeat(labels, self.shots),
                self.scaled(self.images[query]), np.repeat(labels, self.queries))

    def scaled(self, images: np.ndarray) -> np.ndarray:
        """uint8 images as the model's float32 input (``pixels``)."""
        if self.pixels == "raw":
            return images.astype(np.float32)
        unit = images.astype(np.float32) * np.float32(1 / 255)
        return np.float32(1) - unit if self.pixels == "inverted" else unit

    def sample_batch(self, rng: np.random.Generator, n: int) -> Task:
        return sample_batch(self, rng, n)


def check_fits(path, split: str, names: tuple[str, ...], sizes: np.ndarray, ways: int, shots: int,
               queries: int) -> None:
    """A :class:`DatasetError` unless ``split`` of the dataset file ``path`` (its class
    ``names`` and ``sizes``) can serve ``ways``-way tasks of ``shots`` + ``queries`` images."""
    if len(names) < ways:
        raise DatasetError(f"{path}: split '{split}' has {len(names)} classes, fewer "
                           f"than ways={ways}; lower `ways` or use a larger dataset")
    small = np.flatnonzero(sizes < shots + queries)
    if small.size:
        c = int(small[0])
        raise DatasetError(
            f"{path}: class '{names[c]}' of split '{split}' has {sizes[c]} images, "
            f"fewer than shots + queries = {shots} + {queries}; lower `shots` or `queries` "
            f"({small.size} classes are too small)")


def make_sampler(cfg, split: str = "train", shots: int | None = None) -> Sampler:
    """The sampler of ``cfg.dataset`` for ``split`` (``shots`` overrides ``cfg.shots``)."""
    shots = cfg.shots if shots is None else shots
    if cfg.dataset == "sine":
        return SineSampler(shots, cfg.queries)
    return FewShotSampler(cfg.data, split, cfg.ways, shots, cfg.queries, cfg.pixels)
