"""dmaml: Distributed Model-Agnostic Meta-Learning (DMAML) on TensorFlow 2.

From Python: ``run = dmaml.train("runs/x", dataset="sine", workers=4, steps=200)`` trains a run
folder and returns its results (:mod:`dmaml.api`). The package is the algorithm behind the
workflow: task samplers (:mod:`dmaml.tasks`), functional models (:mod:`dmaml.models`), MAML
(:mod:`dmaml.maml`), merges (:mod:`dmaml.merge`), the central learner (:mod:`dmaml.learner`),
its engines (:mod:`dmaml.engines`) and the ``dmaml`` command line.
"""

import os

# TensorFlow's C++ start-up chatter hides our progress lines; users can still set it themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from dmaml.api import Run, omniglot, train  # noqa: E402
from dmaml.config import RunConfig  # noqa: E402

__all__ = ["Run", "RunConfig", "omniglot", "train", "__version__"]
