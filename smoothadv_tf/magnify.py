"""Adversarial magnification (paper Appendix A, eq. 22; Fig. 1).

    mag(x) = (x - μ_x(x)) / (β σ_x(x) + (1 - β) σ_Ω(x))

μ_x = b(x), the bilateral filter of x; σ_x = sqrt(b_x((x - μ_x)²)), the guided bilateral filter with x as the
range image; σ_Ω = the global standard deviation of x, per image and channel. The paper uses β = 0.8 and
σ = 5 for both kernels without saying on what scale the range kernel is; we take σ_d = 5 pixels and
σ_r = 0.2 on [0, 1] images by default (the value the authors' code used), exposed as an argument.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from smoothadv_tf.filters import bilateral_filter

# A constant image has σ_x = σ_Ω = 0 and x - μ = float32 rounding (~1e-7): a floor of 1e-3 (1/4 of a gray
# level) maps it to ~0 instead of magnifying the rounding noise or dividing 0 by 0.
EPS = 1e-3


def magnify(x, beta: float = 0.8, sigma_d: float = 5.0, sigma_r: float = 0.2, radius: int | None = None) -> tf.Tensor:
    """mag(x) of eq. (22) for a batch x (B, H, W, C); unbounded output (see :func:`to_display`)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta}: must be in [0, 1]")
    x = tf.convert_to_tensor(x, tf.float32)
    mean = bilateral_filter(x, sigma_d, sigma_r, radius)
    local_var = bilateral_filter(tf.square(x - mean), sigma_d, sigma_r, radius, guide=x)
    local_std = tf.sqrt(tf.maximum(local_var, 0.0))
    global_std = tf.math.reduce_std(x, axis=[1, 2], keepdims=True)
    return (x - mean) / (beta * local_std + (1.0 - beta) * global_std + EPS)


def to_display(images) -> np.ndarray:
    """Map a set of magnified images to [0, 1] with one common min/max, so they compare (as Fig. 1)."""
    arr = np.asarray(images, np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo)
