"""Per-image perceptibility of an adversarial image: SSIM and PSNR against the original.

Both take batches of [0, 1] images, NHWC (numpy arrays or tensors), and return one value per image as a numpy
float64 array. Records store them with :func:`psnr_for_json`, since JSON has no infinity.
"""

from __future__ import annotations

import numpy as np

# Wang et al. (2004)'s window: 11 taps, σ = 1.5. Smaller windows keep the same shape (σ / size fixed).
MAX_FILTER_SIZE = 11
SIGMA_PER_TAP = 1.5 / 11


def ssim_window(height: int, width: int) -> tuple[int, float]:
    """The Gaussian window (filter_size, sigma) that :func:`ssim` uses on height x width images.

    filter_size = the largest odd number <= min(height, width) / 4, clamped to [3, 11]; sigma = 1.5 ·
    filter_size / 11. So 299x299 (and any side >= 44) gets Wang et al.'s 11 taps, σ = 1.5; 28x28 gets 7 taps,
    σ = 0.955. Why: an 11-tap window on a 28-pixel image spans 40 % of it and 'VALID' filtering keeps only
    the central 18x18, so SSIM would stop being a local measure. σ shrinks with the window (rather than
    cutting a σ = 1.5 Gaussian to 7 taps, which drops 1.7 % of its mass per axis and flattens it): the window
    keeps its shape, and it is the window scikit-image builds for that σ (its Gaussian is cut at 3.5 σ:
    2·int(3.5σ + 0.5) + 1 = filter_size for every odd size 3..11).
    """
    side = min(int(height), int(width))
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {height}x{width}")
    size = min(MAX_FILTER_SIZE, max(3, (side // 4 - 1) // 2 * 2 + 1))
    return size, SIGMA_PER_TAP * size


def ssim(x, x_adv) -> np.ndarray:
    """(B,) SSIM of each x_adv[i] against x[i]; 1 for identical images.

    ``tf.image.ssim`` with max_val = 1, k1 = 0.01, k2 = 0.03, the window of :func:`ssim_window` (filtered
    'VALID': only positions where the window lies inside the image), averaged over positions then channels.
    TF computes in float32.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(x, tf.float32)
    x_adv = tf.convert_to_tensor(x_adv, tf.float32)
    if x.shape.rank != 4 or x.shape != x_adv.shape:
        raise ValueError(f"ssim needs two NHWC batches of the same shape, got {x.shape} and {x_adv.shape}")
    size, sigma = ssim_window(x.shape[1], x.shape[2])
    return tf.image.ssim(x, x_adv, max_val=1.0, filter_size=size, filter_sigma=sigma).numpy().astype(np.float64)


def psnr(x, x_adv) -> np.ndarray:
    """(B,) PSNR in dB of each x_adv[i] against x[i]: 10·log10(1 / MSE), MSE over all pixels and channels
    (max_val = 1), computed in float64. Identical images give +inf."""
    x = np.asarray(x, np.float64)
    x_adv = np.asarray(x_adv, np.float64)
    if x.ndim != 4 or x.shape != x_adv.shape:
        raise ValueError(f"psnr needs two NHWC batches of the same shape, got {x.shape} and {x_adv.shape}")
    mse = np.mean((x - x_adv) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return -10.0 * np.log10(mse)


def psnr_for_json(value: float) -> float | None:
    """A PSNR as a record stores it: None (JSON null) for +inf (the image is the original itself), else the
    value. No finite cap: a cap would pass for a measurement."""
    return None if np.isposinf(value) else float(value)
