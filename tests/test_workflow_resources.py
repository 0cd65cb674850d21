"""What a training job asks the scheduler for: memory follows the engine the run gets."""

from __future__ import annotations

import re

import pytest

from tests.test_workflow import copy_workflow, snakemake

RUN = "results/runs/table2/omniglot-5w1s-n{n}-m1-t32-mean-mean/seed0/run.json"


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


def mem_mb(workflow, target: str, *args: str) -> int:
    result = snakemake(workflow, "-n", target, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job = result.stdout.split("rule train_dmaml:")[1]
    return int(re.search(r"mem_mb=(\d+)", job)[1])


def test_memory_counts_the_worker_processes_of_the_engine(workflow, tmp_path):
    """n = 4 on 4 threads: `auto` runs 4 worker processes, each a TensorFlow runtime of its own
    (1.1 GB peak measured); `vectorized` computes in the learner's process."""
    vectorized = tmp_path / "vectorized.yaml"
    vectorized.write_text("train:\n  engine: vectorized\n")
    one = mem_mb(workflow, RUN.format(n=1))
    auto = mem_mb(workflow, RUN.format(n=4))
    alone = mem_mb(workflow, RUN.format(n=4), "--configfile", str(vectorized))
    assert one == 3000 + 100 and alone == 3000 + 400  # the learner's process holds all
    assert auto == alone + 4 * 1000
