"""The image-guided pixel graph of paper §3, eq. (5), stored as a stencil.

Pixels are vertices; edges join spatial neighbours only (k_s = 1 on the 4- or 8-neighbourhood, 0 elsewhere),
and the weight of edge (i, j) is the feature kernel of the two pixels of the guide image x_o:

    laplacian (default, the paper's choice):  w_ij = exp(-||x_i - x_j|| / sigma)
    gaussian:                                 w_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))

In ``mode="joint"`` (default) ||.|| is the Euclidean distance over all C channels (the paper's x_i in [0,1]^d):
one graph per image, shared by the channels. In ``mode="per_channel"`` each channel has its own graph built
from that channel alone (what the authors' released code did).

Since W is nonzero only between neighbours, it is stored as one coefficient per pixel and per *half*
offset: ``weights[b, y, x, k, g] = w(p, p + offset_k)`` with p = (y, x), zero when p + offset_k is outside the
image. The other half of the neighbourhood follows by symmetry, so ``v -> W v`` is a few shifted
multiply-adds and an n x n matrix is never formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from smoothadv_tf.numerics import safe_sqrt

HALF_OFFSETS = {4: ((0, 1), (1, 0)), 8: ((0, 1), (1, 0), (1, 1), (1, -1))}
KERNELS = ("laplacian", "gaussian")
MODES = ("joint", "per_channel")
DEFAULT_SIGMA = 0.1
# Degrees are clamped here so that an isolated pixel (all weights underflow to 0) gets normalised weights
# 0 instead of 0/0: the pixel is then left unsmoothed.
MIN_DEGREE = 1e-20


def shift(v: tf.Tensor, dy: int, dx: int) -> tf.Tensor:
    """u[:, y, x] = v[:, y + dy, x + dx], zero where (y + dy, x + dx) is outside the image."""
    h, w = v.shape[1], v.shape[2]
    if h is None or w is None:
        h, w = tf.shape(v)[1], tf.shape(v)[2]
    y0, y1 = max(dy, 0), h + min(dy, 0)
    x0, x1 = max(dx, 0), w + min(dx, 0)
    cropped = v[:, y0:y1, x0:x1]
    pads = [[0, 0], [max(-dy, 0), max(dy, 0)], [max(-dx, 0), max(dx, 0)]] + [[0, 0]] * (len(v.shape) - 3)
    return tf.pad(cropped, pads)


def stencil_apply(coeffs: tf.Tensor, offsets, v: tf.Tensor) -> tf.Tensor:
    """v -> W v for W stored as half-offset coefficients (B, H, W, K, G); G broadcasts over v's channels."""
    out = tf.zeros_like(v)
    for k, (dy, dx) in enumerate(offsets):
        c = coeffs[:, :, :, k, :]
        out += c * shift(v, dy, dx) + shift(c * v, -dy, -dx)
    return out


@dataclass
class ImageGraph:
    """Stencil form of W (eq. 5) and of its symmetric normalisation D^-1/2 W D^-1/2 (§3, "Filtering").

    weights, normalized: (B, H, W, K, G) with K half offsets and G = 1 (joint) or C (per channel).
    degree: (B, H, W, G), D = diag(W 1).
    """

    weights: tf.Tensor
    normalized: tf.Tensor
    degree: tf.Tensor
    offsets: tuple[tuple[int, int], ...]
    mode: str

    def apply(self, v: tf.Tensor, normalized: bool = True) -> tf.Tensor:
        """v -> W v (or the normalised 𝒲 v), batched over images and channels. v: (B, H, W, C)."""
        return stencil_apply(self.normalized if normalized else self.weights, self.offsets, v)

    def to_scipy(self, i: int, channel: int = 0, normalized: bool = False):
        """Image i's W (or 𝒲) as a scipy.sparse CSR matrix, n x n, row-major pixel order."""
        import scipy.sparse as sp

        coeffs = (self.normalized if normalized else self.weights).numpy()[i]
        g = 0 if self.mode == "joint" else channel
        h, w = coeffs.shape[:2]
        index = np.arange(h * w).reshape(h, w)
        rows, cols, vals = [], [], []
        for k, (dy, dx) in enumerate(self.offsets):
            ys, xs = np.mgrid[0:h, 0:w]
            inside = (ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)
            src = index[inside]
            dst = index[ys[inside] + dy, xs[inside] + dx]
            val = coeffs[:, :, k, g][inside]
            rows += [src, dst]
            cols += [dst, src]
            vals += [val, val]
        n = h * w
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


def check_guide(x_o, name: str = "x_o") -> tf.Tensor:
    """Convert to a float32 4-D tensor and reject NaN/Inf (eagerly with ValueError, in a graph with an op)."""
    x_o = tf.convert_to_tensor(x_o, tf.float32)
    if x_o.shape.rank != 4:
        raise ValueError(f"{name}: expected a 4-D NHWC tensor, got shape {x_o.shape}")
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(tf.math.is_finite(x_o))):
            raise ValueError(f"{name}: contains NaN or Inf")
    else:
        x_o = tf.debugging.check_numerics(x_o, f"{name}: contains NaN or Inf")
    return x_o


def check_graph_options(neighbors: int, kernel: str, sigma: float, mode: str) -> None:
    """Raise ValueError for options :func:`image_graph` does not take (before any guide image is at hand)."""
    if neighbors not in HALF_OFFSETS:
        raise ValueError(f"neighbors={neighbors}: expected 4 or 8")
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {KERNELS}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    if not sigma > 0:
        raise ValueError(f"sigma={sigma}: must be positive")


def image_graph(
    x_o, neighbors: int = 4, kernel: str = "laplacian", sigma: float = DEFAULT_SIGMA, mode: str = "joint"
) -> ImageGraph:
    """Build the graph of eq. (5) for a batch of guide images x_o (B, H, W, C) in [0, 1]."""
    check_graph_options(neighbors, kernel, sigma, mode)
    x_o = check_guide(x_o)
    offsets = HALF_OFFSETS[neighbors]
    ones = tf.ones_like(x_o[..., :1])
    weights = []
    for dy, dx in offsets:
        diff2 = tf.square(shift(x_o, dy, dx) - x_o)
        sq = tf.reduce_sum(diff2, -1, keepdims=True) if mode == "joint" else diff2
        if kernel == "laplacian":
            wk = tf.exp(-safe_sqrt(sq) / sigma)  # safe: equal neighbours (flat areas) are common
        else:
            wk = tf.exp(-sq / (2.0 * sigma**2))
        weights.append(wk * shift(ones, dy, dx))  # no edge to a pixel outside the image
    weights = tf.stack(weights, axis=3)  # (B, H, W, K, G)
    degree = tf.zeros_like(weights[:, :, :, 0, :])
    for k, (dy, dx) in enumerate(offsets):
        degree += weights[:, :, :, k, :] + shift(weights[:, :, :, k, :], -dy, -dx)
    inv_sqrt = tf.math.rsqrt(tf.maximum(degree, MIN_DEGREE))
    normalized = tf.stack(
        [weights[:, :, :, k, :] * inv_sqrt * shift(inv_sqrt, dy, dx) for k, (dy, dx) in enumerate(offsets)],
        axis=3,
    )
    return ImageGraph(weights, normalized, degree, offsets, mode)
