"""What runs cost and how fast the engines are: ``dmaml plan`` and ``dmaml bench``. Nothing here
can change a run's numbers (the workflow does not count this folder as training code), and only
:mod:`dmaml.cli` imports it.

- :mod:`~dmaml.costs.plan`: ``dmaml plan``, the runs, MAML steps, core-hours and wall time of a
  workflow configuration; its runs (:mod:`~dmaml.costs.runs`), their costs measured on this
  machine and cached (:mod:`~dmaml.costs.measured`) or taken from a benchmark
  (:mod:`~dmaml.costs.from_bench`).
- :mod:`~dmaml.costs.bench`: ``dmaml bench``, seconds per MAML step of every engine; what is timed
  (:mod:`~dmaml.costs.bench_measure`) and the FLOPs of a step (:mod:`~dmaml.costs.flops`).
- :mod:`~dmaml.costs.fresh_process`: one measurement in a fresh Python process, read back as one
  JSON line (both commands measure that way).
"""
