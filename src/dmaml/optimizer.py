"""Adam as a pure function of explicit state, so each worker's state can be kept, saved and sent.

Same update as ``tf.keras.optimizers.Adam`` (Kingma & Ba 2015, with the bias correction folded
into the step size): ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
``theta <- theta - beta sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

B1, B2, EPS = 0.9, 0.999, 1e-7


class AdamState(NamedTuple):
    """First and second moments per parameter and the step count ``t``."""

    m: dict
    v: dict
    t: object  # scalar (float), a tensor inside compiled steps


def init(params: dict[str, np.ndarray]) -> AdamState:
    """Zero moments shaped like ``params`` (numpy)."""
    zeros = {k: np.zeros_like(p) for k, p in params.items()}
    return AdamState(zeros, {k: z.copy() for k, z in zeros.items()}, np.float32(0))


def update(params: dict, grads: dict, state: AdamState, beta) -> tuple[dict, AdamState]:
    """One Adam step on tensors; returns the new parameters and state."""
    t = state.t + 1
    step = beta * tf.sqrt(1 - B2**t) / (1 - B1**t)
    m = {k: B1 * state.m[k] + (1 - B1) * g for k, g in grads.items()}
    v = {k: B2 * state.v[k] + (1 - B2) * tf.square(g) for k, g in grads.items()}
    new = {k: p - step * m[k] / (tf.sqrt(v[k]) + EPS) for k, p in params.items()}
    return new, AdamState(m, v, t)


def to_numpy(state: AdamState) -> AdamState:
    """The same state with numpy arrays (for merging, sending and checkpoints)."""
    return AdamState({k: np.asarray(x) for k, x in state.m.items()},
                     {k: np.asarray(x) for k, x in state.v.items()}, np.float32(state.t))
