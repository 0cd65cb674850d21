"""Costs of ``dmaml plan``'s workloads from ``dmaml bench --out`` JSON-lines files: the file
``--costs`` names, or the benchmarks shipped in ``benchmarks/`` (:func:`shipped_bench`), which a
first plan scales to this machine (:mod:`dmaml.costs.measured`).

A workload's cost is taken from the record of the same dataset and order (of the same task shape
and engine where measured) nearest in n: its core-seconds per FLOP (:mod:`dmaml.costs.flops`)
times the workload's FLOPs over the job's threads, for a MAML step as for an evaluated task; its
compilation is the record's first run beyond the median.
"""

from __future__ import annotations

import json
from pathlib import Path

from dmaml.costs.bench_measure import WORKLOADS
from dmaml.costs.flops import eval_flops, flops_per_step
from dmaml.errors import ConfigError


def _read(path: Path) -> list[dict]:
    """The records of a ``dmaml bench --out`` file."""
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--costs {path}: not a `dmaml bench --out` JSON-lines file ({e})") \
            from None


def bench_cores(records: list[dict]) -> int:
    """The cores the benchmark of ``records`` ran on (its peak record's)."""
    return next((r["cores"] for r in records if r.get("kind") == "matmul_peak" and "cores" in r), 1)


def shipped_bench(folder: Path) -> tuple[str, list[dict]]:
    """The ``dmaml bench`` records shipped in ``folder/benchmarks`` of the machine nearest this
    one in cores (a benchmark's files share its date and cores: ``bench-DATE-Ncores*.jsonl``),
    and their names as a glob; ``("", [])`` where none is shipped."""
    from dmaml.engines import cores

    groups: dict[str, list[Path]] = {}
    for path in sorted(Path(folder, "benchmarks").glob("bench-*cores*.jsonl")):
        groups.setdefault(path.name.split("cores")[0] + "cores", []).append(path)
    if not groups:
        return "", []

    def distance(name: str) -> int:
        digits = "".join(c for c in name.rsplit("-", 1)[-1] if c.isdigit())
        return abs(int(digits or 0) - cores())

    best = min(sorted(groups, reverse=True), key=distance)  # the newest of the nearest
    return (f"benchmarks/{best}*.jsonl",
            [r for path in groups[best] for r in _read(path)])


def benched(key: dict, records: list[dict]) -> bool:
    """Whether one of the benchmark ``records`` measured workload ``key``'s task shape, t and n."""
    fields = ("dataset", "ways", "shots", "queries", "inner_steps", "tasks_per_step")
    return any("median_s" in r and r["n"] == key["workers"]
               and (r["order"] == "first") == key["first_order"]
               and all(WORKLOADS.get(r["workload"], {}).get(f) == key[f] for f in fields)
               for r in records)


def cost_from_bench(key: dict, records: list[dict], cores: int) -> dict | None:
    """The cost of workload ``key`` from ``dmaml bench`` ``records`` (of a machine with
    ``cores``): the record of the same dataset and order (of the same task shape and engine
    where measured) nearest in n, its core-seconds per FLOP times the workload's FLOPs over the
    job's threads. None where no record has its dataset and order."""
    from dmaml import config

    cfg = config.load(None, {k: v for k, v in key.items() if k not in ("workers", "engine")})

    def same(r):
        w = WORKLOADS.get(r.get("workload"), {})
        return ("median_s" in r and w.get("dataset") == cfg.dataset
                and (r["order"] == "first") == cfg.first_order)

    def shape(r):
        w = WORKLOADS[r["workload"]]
        return any(w.get(k, 1) != getattr(cfg, k) for k in ("ways", "shots", "queries",
                                                             "inner_steps"))

    found = sorted((r for r in records if same(r)),
                   key=lambda r: (shape(r), r["engine"] != key["engine"],
                                  abs(r["n"] - key["workers"])))
    if not found:
        return None
    r = found[0]
    measured = config.load(None, {**WORKLOADS[r["workload"]], "first_order": cfg.first_order})
    # core-seconds per FLOP: the bench ran on all its cores, a job runs on its threads
    per_flop = r["median_s"] * cores / (r["n"] * flops_per_step(measured))
    return dict(workload=key,
                step_s=per_flop * flops_per_step(cfg) * key["workers"] / key["threads"],
                compile_s=max(r.get("first_run_s", r["median_s"]) - r["median_s"], 0.0),
                task_s=per_flop * eval_flops(cfg) / key["threads"], eval_compile_s=0.0)


def bench_costs(keys: list[dict], path: Path) -> dict[str, dict]:
    """Costs of each workload from a ``dmaml bench`` JSON-lines file (:func:`cost_from_bench`:
    :func:`dmaml.costs.flops.flops_per_step` for a MAML step, :func:`dmaml.costs.flops.eval_flops`
    for an evaluated task)."""
    records = _read(path)
    startup = next((r["seconds"] for r in records if r.get("workload") == "startup"), 5.0)
    cores = bench_cores(records)
    costs = {'"startup"': dict(workload="startup", seconds=startup)}
    for key in keys:
        cost = cost_from_bench(key, records, cores)
        if cost is None:
            raise ConfigError(f"--costs {path}: no measurement of {key['dataset']}, "
                              f"{'first' if key['first_order'] else 'second'} order; leave "
                              "--costs out to measure it now")
        costs[json.dumps(key, sort_keys=True)] = cost
    return costs
