"""dmaml: Distributed Model-Agnostic Meta-Learning (DMAML) on TensorFlow 2.

The package is the algorithm behind the workflow: task samplers (:mod:`dmaml.tasks`), functional
models (:mod:`dmaml.models`), MAML (:mod:`dmaml.maml`), merges (:mod:`dmaml.merge`), the central
learner (:mod:`dmaml.learner`), its engines (:mod:`dmaml.engines`) and the ``dmaml`` command line.
"""

import os

# TensorFlow's C++ start-up chatter hides our progress lines; users can still set it themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
