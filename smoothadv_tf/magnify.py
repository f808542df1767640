"""Adversarial magnification (paper Appendix A, eq. 22; Fig. 1).

    mag(x) = (x - μ_x(x)) / (β σ_x(x) + (1 - β) σ_Ω(x))                              (eq. 22)

μ_x = b(x), the bilateral filter of x; σ_x = sqrt(b_x((x - μ_x)²)), the guided bilateral filter with x as the
range image; σ_Ω = the global standard deviation of x, per image and channel. The paper uses β = 0.8 and
σ = 5 for both kernels without saying on what scale the range kernel is; we take σ_d = 5 pixels and
σ_r = 0.2 on [0, 1] images by default (the value the authors' code used), exposed as an argument.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from smoothadv_tf.filters import bilateral_filter
from smoothadv_tf.numerics import safe_div

# The denominator of eq. (22) is degenerate where it is at float32 rounding level relative to the image's
# values: on a constant image x - μ_x and σ_x are bilateral-filter rounding (measured up to ~20 eps · max|x|
# with the 25x25 window of σ_d = 5) and σ_Ω is 0, so eq. (22) would be noise / noise. 1024 eps leaves a wide
# margin yet is far below any real image's denominator ((1 - β) σ_Ω alone is ~1e-2 on photos).
DEGENERATE_RELATIVE = 1024 * float(np.finfo(np.float32).eps)


def magnify(x, beta: float = 0.8, sigma_d: float = 5.0, sigma_r: float = 0.2, radius: int | None = None) -> tf.Tensor:
    """mag(x) of eq. (22) for a batch x (B, H, W, C); unbounded output (see :func:`to_display`).

    Exactly eq. (22) wherever its denominator β σ_x + (1 - β) σ_Ω exceeds DEGENERATE_RELATIVE · max|x| (per
    image and channel); where it does not (a constant image or channel, or with β = 1 a perfectly flat
    region) there is no variation to magnify and the output is 0 rather than magnified rounding noise.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta}: must be in [0, 1]")
    x = tf.convert_to_tensor(x, tf.float32)
    mean = bilateral_filter(x, sigma_d, sigma_r, radius)
    local_var = bilateral_filter(tf.square(x - mean), sigma_d, sigma_r, radius, guide=x)
    local_std = tf.sqrt(tf.maximum(local_var, 0.0))
    # float64: a float32 mean over a 299x299 channel is off by ~1e-4 relative, which makes σ_Ω of a constant
    # image ~1e-4 instead of 0 (and biases σ_Ω of nearly flat ones).
    global_std = tf.cast(tf.math.reduce_std(tf.cast(x, tf.float64), axis=[1, 2], keepdims=True), tf.float32)
    den = beta * local_std + (1.0 - beta) * global_std
    scale = tf.reduce_max(tf.abs(x), axis=[1, 2], keepdims=True)
    degenerate = den <= DEGENERATE_RELATIVE * scale  # also catches an all-zero channel (0 <= 0)
    return safe_div(x - mean, den, active=~degenerate)


def to_display(images) -> np.ndarray:
    """Map a set of magnified images to [0, 1] with one common min/max, so they compare (as Fig. 1)."""
    arr = np.asarray(images, np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo)
