"""Functional models: ``init(rng) -> params`` and ``apply(params, x) -> outputs``.

Each model also has ``batched(params, x)``: the same function for N independent instances at once
(N workers, or N tasks each with its own adapted parameters), every parameter and the input
carrying a leading instance axis: ``params[k]`` is ``[N, *shape]``, ``x`` is ``[N, B, ...]`` and
the result ``[N, B, outputs]``. It is what the vectorized engine compiles into one computation.

Parameters are a flat ``dict`` of named tensors (insertion order is the canonical order), and
``apply`` is a pure function of them, so MAML's inner loop can differentiate through parameter
updates with nested ``tf.GradientTape``s (Keras layers whose weights are reassigned break them).

Conventions (docs/design.md, "Conventions that shape the numbers"):
- Batch norm normalises with the statistics of the batch it is given (the support or the query
  set of one task), in training and in evaluation, as the original MAML code does (``norm:
  batch``, the default; ``running`` and ``frozen`` are the Keras readings of :func:`conv4`). Its
  scale and offset are parameters, adapted in the inner loop like all others. Convolutions carry
  no bias: batch norm's offset makes it redundant.
- Weights are Glorot-uniform, biases and offsets zero, scales one.
- Losses are means over examples (the original MAML code divides a sum by K for some models; with
  a mean, alpha means the same thing whatever the number of examples).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

Params = dict[str, tf.Tensor]
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # Keras's, for the moving statistics of batch_norm: running


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
    batched: Callable[[Params, tf.Tensor], tf.Tensor] | None = None  # see the module docstring
    # Per example and forward pass: multiply-adds x 2 of the convolutions and dense layers (batch
    # norm, ReLU and pooling not counted), and the floats of the layers' matmul operands and
    # outputs in ``batched`` (the basis of the engines' memory estimates).
    flops: int = 0
    activations: int = 0
    # Whether many tasks as one ``batched`` computation beat a loop over tasks with native
    # convolutions. Not for 84x84 feature maps: there the im2col patches cost more memory traffic
    # than batching saves (measured: see the vectorized engine).
    batch_tasks: bool = True
    # Up to how many examples a task (support and query sets together) batching pays in a
    # second-order training step; beyond, each task's batch is large enough for native
    # convolutions to win. Omniglot, 2 cores, seconds per MAML step, per-task loop / batched:
    # 5-way 1-shot (10 examples) 0.244 / 0.153, 10-way 1-shot (20) 0.380 / 0.302, 20-way 1-shot
    # (t = 16, 40) 0.326 / 0.408, 5-way 5-shot with 5 queries (50) 0.839 / 1.057, and with the
    # paper's one query (30, t = 32; benchmarks/speed_paths.py) 0.784 / 1.76.
    batch_examples: float = math.inf
    # Parameters that are state, not trained: the moving statistics of batch_norm: running. The
    # inner loop leaves them as they are, the meta-gradient is zero on them, and each MAML step
    # sets them from its training forward passes (:func:`dmaml.maml.moving_statistics`); the
    # merge averages them like the others (Keras ``get_weights`` holds them).
    state: tuple[str, ...] = ()
    # Where evaluation computes otherwise than training (batch_norm: running): ``apply`` and
    # ``batched`` as validation and test use them (:meth:`for_evaluation`).
    eval_apply: Callable[[Params, tf.Tensor], tf.Tensor] | None = None
    eval_batched: Callable[[Params, tf.Tensor], tf.Tensor] | None = None
    # ``(params, x, batched) -> {state name: the batch's statistic}`` of a training forward pass
    norm_stats: Callable[[Params, tf.Tensor, bool], dict[str, tf.Tensor]] | None = None

    def for_evaluation(self) -> Model:
        """The model as validation and test call it (itself, unless it has ``eval_apply``)."""
        if self.eval_apply is None:
            return self
        return dataclasses.replace(self, apply=self.eval_apply, batched=self.eval_batched,
                                   eval_apply=None, eval_batched=None)

    def example_losses(self, outputs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """The loss of each example: softmax cross-entropy or squared error (mean over outputs)."""
        if self.classification:
            return tf.nn.sparse_softmax_cross_entropy_with_logits(y, outputs)
        return tf.reduce_mean(tf.square(outputs - y), axis=-1)

    def example_metrics(self, outputs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Per example: 1.0 for a correct class, else 0.0 (classification); the squared error."""
        if self.classification:
            hits = tf.equal(tf.argmax(outputs, axis=-1, output_type=y.dtype), y)
            return tf.cast(hits, outputs.dtype)
        return self.example_losses(outputs, y)

    def loss(self, outputs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Mean loss over examples: softmax cross-entropy or mean squared error."""
        return tf.reduce_mean(self.example_losses(outputs, y))

    def metric(self, outputs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Accuracy for classification, mean squared error for regression."""
        return tf.reduce_mean(self.example_metrics(outputs, y))

    def losses(self, outputs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """:meth:`loss` of each instance of a batched output ``[N, B, ...]``: shape ``[N]``."""
        return tf.reduce_mean(self.example_losses(outputs, y), axis=-1)

    def metrics(self, outputs: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """:meth:`metric` of each instance of a batched output ``[N, B, ...]``: shape ``[N]``."""
        return tf.reduce_mean(self.example_metrics(outputs, y), axis=-1)


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

    def batched(params: Params, x: tf.Tensor) -> tf.Tensor:
        # tf.matmul batches over the leading instance axis; biases broadcast over the examples.
        return apply({k: v[:, None] if k.endswith("/b") else v for k, v in params.items()}, x)

    flops = 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return Model("mlp", init, apply, classification=False, batched=batched, flops=flops,
                 activations=sum(sizes))


def moments(x: tf.Tensor, axes: tuple[int, ...]) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and (biased) variance over ``axes``, kept as size-1 axes.

    Written out rather than taken from ``tf.nn.moments``, which stops the gradient through the
    mean inside the variance: harmless for first derivatives, wrong for MAML's second.
    """
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    var = tf.reduce_mean(tf.square(x - mean), axis=axes, keepdims=True)
    return mean, var


def same_padding(size: int, stride: int, kernel: int = 3) -> tuple[int, int, int]:
    """Output size and padding before and after of a 'SAME' convolution, as ``tf.nn.conv2d``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def conv3x3_batched(x: tf.Tensor, w: tf.Tensor, stride: int) -> tf.Tensor:
    """``tf.nn.conv2d(x[i], w[i], stride, 'SAME')`` for every instance i at once.

    ``x`` is ``[N, B, H, W, C]`` and ``w`` ``[N, 3, 3, C, F]``. Written as im2col (nine strided
    slices of the padded input, concatenated in the kernel's (row, column, channel) order) and one
    batched matmul: every op has CPU gradients of any order, which grouped convolutions lack, and
    under XLA the slicing fuses into the matmul's operand.
    """
    _, b, height, width, c = x.shape
    ho, top, bottom = same_padding(height, stride)
    wo, left, right = same_padding(width, stride)
    x = tf.pad(x, [[0, 0], [0, 0], [top, bottom], [left, right], [0, 0]])
    cols = [x[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            for i in range(3) for j in range(3)]
    patches = tf.reshape(tf.concat(cols, axis=-1), [-1, b * ho * wo, 9 * c])
    out = tf.matmul(patches, tf.reshape(w, [-1, 9 * c, w.shape[-1]]))
    return tf.reshape(out, [-1, b, ho, wo, w.shape[-1]])


def max_pool_2x2(x: tf.Tensor) -> tf.Tensor:
    """``tf.nn.max_pool2d(x, 2, 2, 'VALID')`` over the two axes before the last, of any rank.

    The maximum of the window's four strided slices, taken in row-major order so that a tie goes
    to the first element as in ``MaxPoolGrad``. Its gradients of every order are exact under XLA,
    whose ``MaxPoolGradGrad`` (MAML's second order through pooling) rounds to 16 bits.
    """
    height, width = (x.shape[-3] // 2) * 2, (x.shape[-2] // 2) * 2
    corner = [x[..., i:height:2, j:width:2, :] for i in range(2) for j in range(2)]
    return tf.maximum(tf.maximum(corner[0], corner[1]), tf.maximum(corner[2], corner[3]))


def conv4(ways: int, channels: int, image_size: int, filters: int, max_pool: bool,
          blocks: int = 4, norm: str = "batch", features: str = "flatten") -> Model:
    """Four blocks of [3x3 conv, batch norm, ReLU] and a dense layer to ``ways`` logits.

    ``max_pool=False``: stride-2 convolutions ('same' padding), the Omniglot model;
    ``max_pool=True``: stride-1 convolutions followed by 2x2 max-pooling, the miniImageNet model.
    ``norm``, the ``batch_norm`` setting: ``batch`` normalises with each batch's statistics,
    always (MAML's choice); ``running`` does so in training but keeps Keras-style moving
    statistics (parameters ``bn<i>/mean`` and ``bn<i>/var``, :attr:`Model.state`) and normalises
    with them in evaluation; ``frozen`` always normalises with moving statistics that stay at
    their initial 0 and 1 (a Keras model never called with ``training=True``): a per-channel
    scale and offset. ``features``: ``flatten`` the last feature map (ours) or take its spatial
    ``mean`` (cbfinn/maml's Omniglot model).
    """
    size, cin, flops, activations = image_size, channels, 0, image_size**2 * channels
    for _ in range(blocks):
        conv_size = size if max_pool else -(-size // 2)
        flops += 2 * conv_size**2 * 9 * cin * filters
        activations += conv_size**2 * (9 * cin + filters)  # im2col patches and the output
        size = size // 2 if max_pool else conv_size
        activations += size**2 * filters if max_pool else 0
        cin = filters
    n_features = size * size * filters if features == "flatten" else filters
    flops += 2 * n_features * ways
    activations += ways
    stride = 1 if max_pool else 2

    def init(rng: np.random.Generator) -> dict[str, np.ndarray]:
        params = {}
        cin = channels
        for i in range(blocks):
            params[f"conv{i}/w"] = glorot(rng, (3, 3, cin, filters))
            params[f"bn{i}/scale"] = np.ones(filters, np.float32)
            params[f"bn{i}/offset"] = np.zeros(filters, np.float32)
            cin = filters
        params["dense/w"] = glorot(rng, (n_features, ways))
        params["dense/b"] = np.zeros(ways, np.float32)
        if norm == "running":  # Keras's initial moving statistics
            for i in range(blocks):
                params[f"bn{i}/mean"] = np.zeros(filters, np.float32)
                params[f"bn{i}/var"] = np.ones(filters, np.float32)
        return params

    def forward(params: Params, x: tf.Tensor, batched: bool, moving: bool
                ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Logits, and the batch statistics each batch norm normalised with (training mode).
        ``batched``: an instance axis in front (see the module docstring); ``moving``: normalise
        with the moving statistics (evaluation of ``running``)."""
        h, stats = x, {}
        lead = 1 if batched else 0  # instance axes before the batch axis

        def per_instance(v: tf.Tensor) -> tf.Tensor:  # [N, C] -> [N, 1, 1, 1, C]
            return v[:, None, None, None] if batched else v

        for i in range(blocks):
            if batched:
                h = conv3x3_batched(h, params[f"conv{i}/w"], stride)
            else:
                h = tf.nn.conv2d(h, params[f"conv{i}/w"], stride, "SAME")
            scale, offset = (per_instance(params[f"bn{i}/{k}"]) for k in ("scale", "offset"))
            if norm == "frozen":
                h = tf.nn.batch_normalization(h, tf.zeros_like(offset), tf.ones_like(scale),
                                              offset, scale, BN_EPSILON)
            elif moving:
                h = tf.nn.batch_normalization(h, per_instance(params[f"bn{i}/mean"]),
                                              per_instance(params[f"bn{i}/var"]), offset, scale,
                                              BN_EPSILON)
            else:
                axes = tuple(range(lead, lead + 3))
                mean, var = moments(h, axes)
                stats[f"bn{i}/mean"] = tf.reshape(mean, [-1, filters] if batched else [filters])
                stats[f"bn{i}/var"] = tf.reshape(var, [-1, filters] if batched else [filters])
                h = tf.nn.batch_normalization(h, mean, var, offset, scale, BN_EPSILON)
            h = tf.nn.relu(h)
            if max_pool:
                h = max_pool_2x2(h) if batched else tf.nn.max_pool2d(h, 2, 2, "VALID")
        if features == "mean":
            h = tf.reduce_mean(h, axis=(lead + 1, lead + 2))
        elif batched:
            h = tf.reshape(h, [-1, x.shape[1], n_features])
        else:
            h = tf.reshape(h, [tf.shape(h)[0], n_features])
        bias = params["dense/b"][:, None] if batched else params["dense/b"]
        return tf.matmul(h, params["dense/w"]) + bias, stats

    def apply(params: Params, x: tf.Tensor) -> tf.Tensor:
        return forward(params, x, False, False)[0]

    def batched(params: Params, x: tf.Tensor) -> tf.Tensor:
        return forward(params, x, True, False)[0]

    running = norm == "running"
    name = f"conv4-{filters}{'-maxpool' if max_pool else '-stride2'}"
    return Model(name, init, apply, classification=True, batched=batched, flops=flops,
                 activations=activations, batch_tasks=not max_pool, batch_examples=20,
                 state=tuple(f"bn{i}/{k}" for i in range(blocks) for k in ("mean", "var"))
                 if running else (),
                 eval_apply=(lambda p, x: forward(p, x, False, True)[0]) if running else None,
                 eval_batched=(lambda p, x: forward(p, x, True, True)[0]) if running else None,
                 norm_stats=(lambda p, x, b: forward(p, x, b, False)[1]) if running else None)


def for_config(cfg) -> Model:
    """The paper's model for ``cfg.dataset`` (docs/design.md)."""
    if cfg.dataset == "sine":
        return mlp()
    if cfg.dataset == "omniglot":
        return conv4(cfg.ways, channels=1, image_size=28, filters=64, max_pool=False,
                     norm=cfg.batch_norm, features=cfg.features)
    return conv4(cfg.ways, channels=3, image_size=84, filters=32, max_pool=True,
                 norm=cfg.batch_norm, features=cfg.features)
