"""Task samplers: shapes, seeding, classes without replacement, clear errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from dmaml.data.store import DatasetError
from dmaml.tasks import FewShotSampler, SineSampler, task_rng

from .conftest import make_h5


def test_sine_tasks_follow_the_paper_ranges():
    xs, ys, xq, yq = SineSampler(10, 7).sample(task_rng(0, 0))
    assert xs.shape == ys.shape == (10, 1) and xq.shape == yq.shape == (7, 1)
    assert xs.dtype == np.float32 and np.all(np.abs(xs) <= 5)
    assert np.all(np.abs(yq) <= 5)


def test_tasks_are_fixed_by_seed_worker_and_step(synthetic_h5):
    sampler = FewShotSampler(str(synthetic_h5), "train", 5, 2, 3)
    a = sampler.sample(task_rng(1, 0, 2, 7))
    b = sampler.sample(task_rng(1, 0, 2, 7))
    c = sampler.sample(task_rng(1, 0, 3, 7))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_few_shot_task_layout(synthetic_h5):
    sampler = FewShotSampler(str(synthetic_h5), "train", 5, 2, 3)
    xs, ys, xq, yq = sampler.sample(task_rng(0, 0))
    assert xs.shape == (10, 28, 28, 1) and xq.shape == (15, 28, 28, 1)
    assert xs.dtype == np.float32 and xs.min() >= 0 and xs.max() <= 1
    np.testing.assert_array_equal(ys, np.repeat(np.arange(5), 2))
    np.testing.assert_array_equal(yq, np.repeat(np.arange(5), 3))
    # support and query images are distinct drawings (each class has 6, 5 are used)
    flat = np.concatenate([xs, xq]).reshape(25, -1)
    assert len({row.tobytes() for row in flat}) == 25


def test_classes_drawn_without_replacement(synthetic_h5):
    sampler = FewShotSampler(str(synthetic_h5), "train", 12, 1, 1)
    xs, *_ = sampler.sample(task_rng(0, 0))
    # with 12 ways out of 12 classes, every class appears exactly once
    protos = sampler.images.reshape(12, 6, -1).astype(np.float32) / 255
    owners = [int(np.argmin(((protos - x.reshape(1, 1, -1)) ** 2).sum(-1).min(-1))) for x in xs]
    assert sorted(owners) == list(range(12))


def test_too_few_images_per_class_names_the_class(synthetic_h5):
    with pytest.raises(DatasetError, match=r"class 'train/class000'.*has 6 images.*shots \+ queries"):
        FewShotSampler(str(synthetic_h5), "train", 5, 4, 3)


def test_too_few_classes(synthetic_h5):
    with pytest.raises(DatasetError, match="fewer than ways=20"):
        FewShotSampler(str(synthetic_h5), "train", 20, 1, 1)


def test_file_without_expected_groups(tmp_path):
    path = make_h5(tmp_path / "d.h5", splits=("train",))
    with pytest.raises(DatasetError, match=r"d.h5: no group 'test'"):
        FewShotSampler(str(path), "test", 5, 1, 1)


def test_older_layout_and_truncated_files(tmp_path):
    path = make_h5(tmp_path / "d.h5")
    with h5py.File(path, "a") as f:
        f.attrs["layout_version"] = 0
    with pytest.raises(DatasetError, match="layout version 0"):
        FewShotSampler(str(path), "train", 5, 1, 1)
    path = make_h5(tmp_path / "e.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="e.h5: .*(corrupt|not a readable)"):
        FewShotSampler(str(path), "train", 5, 1, 1)
    with pytest.raises(DatasetError, match="no such dataset file"):
        FewShotSampler(str(tmp_path / "missing.h5"), "train", 5, 1, 1)
