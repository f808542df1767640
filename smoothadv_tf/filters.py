"""Bilateral filtering as batched TensorFlow ops (paper Appendix A; the defence of §5.4).

    b(x)_p = Σ_q k_d(p, q) k_r(g_p, g_q) x_q / Σ_q k_d(p, q) k_r(g_p, g_q)

with domain kernel k_d = exp(-||p - q||² / (2 σ_d²)) over a (2·radius+1)² window and range kernel
k_r = exp(-||g_p - g_q||² / (2 σ_r²)), where the range image g is x itself or a separate `guide` (the guided
filter b_x of Appendix A). Channels are filtered independently, but by default (``range_mode="joint"``) the
photometric distance is one scalar per pixel pair: the Euclidean distance over all channels of g (Appendix A).
``range_mode="per_channel"`` uses each channel's own distance (a channel-by-channel filter). Only in-image
neighbours count: weights are renormalised at the border, never zero-padded.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


def default_radius(sigma_d: float) -> int:
    """ceil(2.326 σ_d): the Gaussian's 1 % two-sided tail is left out."""
    return max(1, math.ceil(2.326 * sigma_d))


def _check(x, name: str) -> tf.Tensor:
    x = tf.convert_to_tensor(x, tf.float32)
    if x.shape.rank != 4:
        raise ValueError(f"{name}: expected a 4-D NHWC tensor, got shape {x.shape}")
    if tf.executing_eagerly() and not bool(tf.reduce_all(tf.math.is_finite(x))):
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def _check_params(sigma_d, sigma_r, radius, range_mode) -> None:
    if not sigma_d > 0 or not sigma_r > 0:
        raise ValueError(f"sigma_d={sigma_d}, sigma_r={sigma_r}: both must be positive")
    if range_mode not in ("joint", "per_channel"):
        raise ValueError(f"range_mode={range_mode!r}: expected 'joint' or 'per_channel'")
    if radius is not None and int(radius) < 0:
        raise ValueError(f"radius={radius}: must be >= 0")


def bilateral_filter(
    x, sigma_d: float, sigma_r: float, radius: int | None = None, guide=None, range_mode: str = "joint"
) -> tf.Tensor:
    """Bilateral (or, with `guide`, guided/joint bilateral) filter of x (B, H, W, C)."""
    _check_params(sigma_d, sigma_r, radius, range_mode)
    x = _check(x, "x")
    g = x if guide is None else _check(guide, "guide")
    if guide is not None and g.shape[:3] != x.shape[:3]:
        raise ValueError(f"guide: shape {g.shape} does not match x {x.shape} in batch and space")
    if range_mode == "per_channel" and g.shape[-1] != x.shape[-1]:
        raise ValueError("range_mode='per_channel' needs a guide with as many channels as x")
    radius = default_radius(sigma_d) if radius is None else int(radius)
    return _bilateral(x, g, float(sigma_d), float(sigma_r), radius, range_mode == "joint")


@tf.function(jit_compile=True)  # XLA fuses the window loop: ~20x faster than eager on CPU
def _bilateral(x, g, sigma_d, sigma_r, radius, joint):
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    pad = [[0, 0], [radius, radius], [radius, radius], [0, 0]]
    x_pad = tf.pad(x, pad)
    g_pad = tf.pad(g, pad)
    inside = tf.pad(tf.ones_like(x[..., :1]), pad)  # 1 on image pixels, 0 on the padding
    side = 2 * radius + 1

    def body(k, num, den):
        dy, dx = k // side, k % side
        begin = tf.stack([0, dy, dx, 0])
        take = lambda t: tf.slice(t, begin, tf.stack([-1, h, w, -1]))  # noqa: E731
        dist2 = tf.cast((dy - radius) ** 2 + (dx - radius) ** 2, tf.float32)
        diff2 = tf.square(take(g_pad) - g)
        if joint:
            diff2 = tf.reduce_sum(diff2, -1, keepdims=True)
        weight = tf.exp(-dist2 / (2 * sigma_d**2) - diff2 / (2 * sigma_r**2)) * take(inside)
        # tf.slice forgets the static batch size; keep the loop variables' shapes fixed.
        return (
            k + 1,
            tf.ensure_shape(num + weight * take(x_pad), num.shape),
            tf.ensure_shape(den + weight, den.shape),
        )

    zeros = tf.zeros_like(x)
    den0 = zeros[..., :1] if joint else zeros
    _, num, den = tf.while_loop(lambda k, *_: k < side * side, body, (tf.constant(0), zeros, den0))
    return num / den  # den >= the centre pixel's own weight, 1


@keras.saving.register_keras_serializable(package="smoothadv_tf")
class BilateralFilter(keras.layers.Layer):
    """Keras layer applying :func:`bilateral_filter` (e.g. as a defence in front of a model, §5.4:
    σ_d = 0.5, σ_r = 0.2 on [0,1] images, radius 5).

    Takes the Keras layer keywords (name, dtype, ...) and is registered as serialisable, so a saved model
    containing it loads with ``keras.models.load_model``. Filters in float32; the output has the layer's
    compute dtype.
    """

    def __init__(
        self,
        sigma_d: float = 0.5,
        sigma_r: float = 0.2,
        radius: int | None = 5,
        range_mode: str = "joint",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_params(sigma_d, sigma_r, radius, range_mode)
        self.sigma_d, self.sigma_r, self.range_mode = float(sigma_d), float(sigma_r), range_mode
        self.radius = None if radius is None else int(radius)

    def call(self, x):
        """The bilateral filter of the NHWC batch `x`, guided by `x` itself (:func:`bilateral_filter`)."""
        out = bilateral_filter(
            tf.cast(x, tf.float32), self.sigma_d, self.sigma_r, self.radius, range_mode=self.range_mode
        )
        return tf.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        """The input's shape: filtering keeps the image size and channels."""
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "sigma_d": self.sigma_d,
            "sigma_r": self.sigma_r,
            "radius": self.radius,
            "range_mode": self.range_mode,
        }
