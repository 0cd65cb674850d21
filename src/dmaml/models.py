"""Functional models: ``init(rng) -> params`` and ``apply(params, x) -> outputs``.

Parameters are a flat ``dict`` of named tensors (insertion order is the canonical order), and
``apply`` is a pure function of them, so MAML's inner loop can differentiate through parameter
updates with nested ``tf.GradientTape``s (Keras layers whose weights are reassigned break them).

Conventions (SPEC section 3):
- Batch norm always normalises with the statistics of the batch it is given (the support or the
  query set of one task), in training and in evaluation, as the original MAML code does. There are
  no running averages; its scale and offset are parameters, adapted in the inner loop like all
  others. Convolutions carry no bias: batch norm's offset makes it redundant.
- Weights are Glorot-uniform, biases and offsets zero, scales one.
- Losses are means over examples (the original MAML code divides a sum by K for some models; with
  a mean, alpha means the same thing whatever the number of examples).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

Params = dict[str, tf.Tensor]
BN_EPSILON = 1e-3


def glorot(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Glorot-uniform weights for a dense ``[in, out]`` or conv ``[h, w, in, out]`` kernel."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


@dataclass(frozen=True)
class Model:
    """A functional model with its loss and its metric (accuracy, or the loss for regression)."""

    name: str
    init: Callable[[np.random.Generator], dict[str, np.ndarray]]
    apply: Callable[[Params, tf.Tensor], tf.Tensor]
    classification: bool

    def loss(self, outputs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Mean loss over examples: softmax cross-entropy or mean squared error."""
        if self.classification:
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, outputs))
        return tf.reduce_mean(tf.square(outputs - y))

    def metric(self, outputs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Accuracy for classification, mean squared error for regression."""
        if self.classification:
            hits = tf.equal(tf.argmax(outputs, axis=-1, output_type=y.dtype), y)
            return tf.reduce_mean(tf.cast(hits, outputs.dtype))
        return self.loss(outputs, y)


def mlp(hidden: tuple[int, ...] = (40, 40), inputs: int = 1, outputs: int = 1) -> Model:
    """The sine-regression MLP (1-40-40-1, ReLU)."""
    sizes = (inputs, *hidden, outputs)

    def init(rng: np.random.Generator) -> dict[str, np.ndarray]:
        params = {}
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            params[f"dense{i}/w"] = glorot(rng, (a, b))
            params[f"dense{i}/b"] = np.zeros(b, np.float32)
        return params

    def apply(params: Params, x: tf.Tensor) -> tf.Tensor:
        h = x
        for i in range(len(sizes) - 1):
            h = tf.matmul(h, params[f"dense{i}/w"]) + params[f"dense{i}/b"]
            if i < len(sizes) - 2:
                h = tf.nn.relu(h)
        return h

    return Model("mlp", init, apply, classification=False)


def batch_norm(x: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """Batch norm over the batch and spatial axes of this batch alone (no running averages).

    The moments are written out rather than taken from ``tf.nn.moments``, which stops the gradient
    through the mean inside the variance: harmless for first derivatives, wrong for MAML's second.
    """
    mean = tf.reduce_mean(x, axis=[0, 1, 2], keepdims=True)
    var = tf.reduce_mean(tf.square(x - mean), axis=[0, 1, 2], keepdims=True)
    return tf.nn.batch_normalization(x, mean, var, offset, scale, BN_EPSILON)


def conv4(ways: int, channels: int, image_size: int, filters: int, max_pool: bool,
          blocks: int = 4) -> Model:
    """Four blocks of [3x3 conv, batch norm, ReLU] and a dense layer to ``ways`` logits.

    ``max_pool=False``: stride-2 convolutions ('same' padding), the Omniglot model;
    ``max_pool=True``: stride-1 convolutions followed by 2x2 max-pooling, the miniImageNet model.
    """
    size = image_size
    for _ in range(blocks):
        size = size // 2 if max_pool else -(-size // 2)
    features = size * size * filters

    def init(rng: np.random.Generator) -> dict[str, np.ndarray]:
        params = {}
        cin = channels
        for i in range(blocks):
            params[f"conv{i}/w"] = glorot(rng, (3, 3, cin, filters))
            params[f"bn{i}/scale"] = np.ones(filters, np.float32)
            params[f"bn{i}/offset"] = np.zeros(filters, np.float32)
            cin = filters
        params["dense/w"] = glorot(rng, (features, ways))
        params["dense/b"] = np.zeros(ways, np.float32)
        return params

    def apply(params: Params, x: tf.Tensor) -> tf.Tensor:
        h = x
        for i in range(blocks):
            h = tf.nn.conv2d(h, params[f"conv{i}/w"], 1 if max_pool else 2, "SAME")
            h = tf.nn.relu(batch_norm(h, params[f"bn{i}/scale"], params[f"bn{i}/offset"]))
            if max_pool:
                h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        h = tf.reshape(h, [tf.shape(h)[0], features])
        return tf.matmul(h, params["dense/w"]) + params["dense/b"]

    name = f"conv4-{filters}{'-maxpool' if max_pool else '-stride2'}"
    return Model(name, init, apply, classification=True)


def for_config(cfg) -> Model:
    """The paper's model for ``cfg.dataset`` (SPEC section 2)."""
    if cfg.dataset == "sine":
        return mlp()
    if cfg.dataset == "omniglot":
        return conv4(cfg.ways, channels=1, image_size=28, filters=64, max_pool=False)
    return conv4(cfg.ways, channels=3, image_size=84, filters=32, max_pool=True)
