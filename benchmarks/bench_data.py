"""Measure the data stage: preprocessing time and peak memory, and task-sampling throughput.

    python benchmarks/bench_data.py [--shared ../shared/data] [--work /tmp/dmaml-bench-data]

1. Full Omniglot preprocessing (``dmaml prepare-omniglot`` on the real zips) in a child
   process: wall time and peak resident memory (``ru_maxrss`` of the child and its descendants,
   from ``os.wait4``, the per-child form of ``resource.getrusage(RUSAGE_CHILDREN)``).
2. miniImageNet: with ``--miniimagenet-source`` a real copy is preprocessed the same way;
   otherwise a synthetic but realistic source is built in the CSV form: the real Ravi & Larochelle
   split CSVs (100 classes x 600 file names), each file a random crop of that class's real
   ImageNet photo saved as a JPEG of 90-140 pixels a side (so every image is resized). Also
   measured: decoding + resizing the 100 full-size photos, to extrapolate to original ImageNet
   JPEGs.
3. Task sampling with :class:`dmaml.tasks.FewShotSampler` (split loaded once, then ``sample``
   in a loop and ``sample_batch`` with the paper's tasks per step): Omniglot 5-way 1-shot and
   20-way 1-shot (1 query), miniImageNet 5-way 5-shot (15 queries).

Prints a Markdown table of the figures.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from dmaml.data.miniimagenet import decode
from dmaml.tasks import FewShotSampler

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")


def measure(args: list[str]) -> tuple[float, float]:
    """Run ``dmaml ARGS`` in a child process: (wall seconds, peak RSS in MiB of its process tree)."""
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "dmaml.cli", *args])
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"dmaml {' '.join(args)} failed ({process.returncode})")
    return time.monotonic() - start, usage.ru_maxrss / 1024


def build_miniimagenet_source(shared: Path, root: Path, seed: int = 0) -> Path:
    """The synthetic CSV-form source described in the module docstring (skipped if present)."""
    if (root / "done").exists():
        return root
    rng = np.random.default_rng(seed)
    photos = {}
    with open(shared / "miniimagenet" / "imagenet-samples" / "index.csv") as f:
        for row in csv.DictReader(f):
            with Image.open(shared / "miniimagenet" / "imagenet-samples" / "original"
                            / row["filename"]) as photo:
                photo = photo.convert("RGB")
                photo.thumbnail((320, 320))
                photos[row["label"]] = photo
    (root / "images").mkdir(parents=True, exist_ok=True)

    def write(item: tuple[str, str, int]) -> None:
        name, wnid, i = item
        local = np.random.default_rng([seed, i])
        photo = photos[wnid]
        w, h = photo.size
        cw, ch = int(w * local.uniform(0.5, 0.9)), int(h * local.uniform(0.5, 0.9))
        x, y = int(local.integers(0, w - cw)), int(local.integers(0, h - ch))
        image = photo.crop((x, y, x + cw, y + ch)).resize(tuple(local.integers(90, 141, 2)))
        if local.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        image.save(root / "images" / name, quality=90)

    items = []
    for split in SPLITS:
        text = (shared / "miniimagenet" / f"{split}.csv").read_text()
        (root / f"{split}.csv").write_text(text)
        items += [(row["filename"], row["label"], len(items) + i)
                  for i, row in enumerate(csv.DictReader(text.splitlines()))]
    rng.shuffle(items)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, items, chunksize=256))
    (root / "done").touch()
    return root


def full_size_decode_rate(shared: Path) -> float:
    """Images per second decoded and resized to 84x84 from the 100 full-size photos (all CPUs)."""
    photos = sorted((shared / "miniimagenet" / "imagenet-samples" / "original").iterdir())
    start = time.monotonic()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(decode, photos))
    return len(photos) / (time.monotonic() - start)


def sampling_rate(path: Path, ways: int, shots: int, queries: int, batch: int,
                  seconds: float) -> tuple[float, float, float]:
    """(split load seconds, tasks/s with ``sample``, tasks/s with ``sample_batch(batch)``)."""
    start = time.monotonic()
    sampler = FewShotSampler(str(path), "train", ways, shots, queries)
    load = time.monotonic() - start
    rates = []
    for draw, per_call in ((sampler.sample, 1), (lambda r: sampler.sample_batch(r, batch), batch)):
        rng, tasks = np.random.default_rng(0), 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            draw(rng)
            tasks += per_call
        rates.append(tasks / (time.monotonic() - start))
    return load, rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data",
                        help="the folder of the real data (Omniglot zips, miniImageNet CSVs and "
                             "photos); default: %(default)s")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dmaml-bench-data"),
                        help="scratch folder for the sources and HDF5 files (default: %(default)s)")
    parser.add_argument("--miniimagenet-source", type=Path,
                        help="a real miniImageNet copy to preprocess instead of the synthetic one")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="time spent on each sampling measurement (default: 5)")
    args = parser.parse_args()
    if not (args.shared / "omniglot" / "images_background.zip").is_file():
        raise SystemExit(f"{args.shared}: no Omniglot zips; pass --shared DIR")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []

    omniglot = args.work / "omniglot.h5"
    seconds, rss = measure(["prepare-omniglot", "--source", str(args.shared / "omniglot"),
                            "--out", str(omniglot)])
    rows.append(("Omniglot preprocessing (both full zips)", f"{seconds:.1f} s", f"{rss:.0f} MiB"))

    source = args.miniimagenet_source
    if source is None:
        start = time.monotonic()
        source = build_miniimagenet_source(args.shared, args.work / "miniimagenet-source")
        print(f"synthetic miniImageNet source ready in {time.monotonic() - start:.0f} s",
              file=sys.stderr)
    mini = args.work / "miniimagenet.h5"
    seconds, rss = measure(["prepare-miniimagenet", "--source", str(source), "--out", str(mini)])
    rows.append(("miniImageNet preprocessing (60,000 images, CSV form)", f"{seconds:.1f} s",
                 f"{rss:.0f} MiB"))
    rate = full_size_decode_rate(args.shared)
    rows.append(("decode + resize of full-size ImageNet JPEGs", f"{rate:.0f} images/s",
                 f"60,000 in ~{60000 / rate / 60:.0f} min"))

    for name, path, ways, shots, queries, batch in (
            ("Omniglot 5-way 1-shot, 1 query", omniglot, 5, 1, 1, 32),
            ("Omniglot 20-way 1-shot, 1 query", omniglot, 20, 1, 1, 32),
            ("miniImageNet 5-way 5-shot, 15 queries", mini, 5, 5, 15, 4)):
        load, single, batched = sampling_rate(path, ways, shots, queries, batch, args.seconds)
        rows.append((f"sampling {name}", f"{single:,.0f} tasks/s",
                     f"batches of {batch}: {batched:,.0f} tasks/s; split loaded in {load:.1f} s"))

    print("\n| measurement | figure | notes |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
