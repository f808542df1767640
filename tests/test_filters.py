"""Bilateral filter against a NumPy brute force (double loop over pixels and window); magnification."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import photo

from smoothadv_tf.filters import BilateralFilter, bilateral_filter, default_radius
from smoothadv_tf.magnify import magnify, to_display


def brute_bilateral(x, guide, sigma_d, sigma_r, radius, joint=True):
    h, w, c = x.shape
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            num, den = np.zeros(c), np.zeros(c)
            for a in range(max(0, i - radius), min(h, i + radius + 1)):
                for b in range(max(0, j - radius), min(w, j + radius + 1)):
                    diff2 = (guide[a, b].astype(np.float64) - guide[i, j]) ** 2
                    diff2 = np.full(c, diff2.sum()) if joint else diff2
                    wgt = np.exp(-((a - i) ** 2 + (b - j) ** 2) / (2 * sigma_d**2) - diff2 / (2 * sigma_r**2))
                    num += wgt * x[a, b]
                    den += wgt
            out[i, j] = num / den
    return out


@pytest.fixture(scope="module")
def crops():
    return photo("astronaut")[90:104, 180:197], photo("coffee")[200:214, 300:317]


@pytest.mark.parametrize("joint", [True, False], ids=["joint", "per_channel"])
def test_plain_bilateral_matches_brute_force(crops, joint):
    x = crops[0]
    ours = bilateral_filter(x[None], 2.0, 0.15, radius=3, range_mode="joint" if joint else "per_channel")[0]
    np.testing.assert_allclose(ours.numpy(), brute_bilateral(x, x, 2.0, 0.15, 3, joint), atol=1e-5)


def test_guided_bilateral_matches_brute_force(crops):
    x, guide = crops
    signal = (x - 0.5) ** 2
    ours = bilateral_filter(signal[None], 1.5, 0.2, radius=4, guide=guide[None])[0]
    np.testing.assert_allclose(ours.numpy(), brute_bilateral(signal, guide, 1.5, 0.2, 4), atol=1e-5)


def test_border_uses_only_in_image_neighbours():
    x = np.full((1, 9, 9, 1), 0.7, np.float32)  # zero padding would darken the border
    np.testing.assert_allclose(bilateral_filter(x, 3.0, 0.2, radius=4).numpy(), 0.7, atol=1e-6)
    assert default_radius(5.0) == 12 and default_radius(0.5) == 2


def test_layer_and_bad_input(crops):
    x = crops[0][None]
    np.testing.assert_allclose(
        BilateralFilter(0.5, 0.2, 5)(x).numpy(), bilateral_filter(x, 0.5, 0.2, 5).numpy(), atol=1e-7
    )
    with pytest.raises(ValueError, match="4-D"):
        bilateral_filter(x[0], 1.0, 0.1)
    with pytest.raises(ValueError, match="positive"):
        bilateral_filter(x, 0.0, 0.1)
    with pytest.raises(ValueError, match="guide"):
        bilateral_filter(x, 1.0, 0.1, guide=x[:, :5])
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bilateral_filter(bad, 1.0, 0.1)


def test_magnify_definition_and_constant_image(crops):
    x = crops[0][None]
    mean = bilateral_filter(x, 5.0, 0.2)
    local = np.sqrt(bilateral_filter((x - mean) ** 2, 5.0, 0.2, guide=x).numpy())
    expected = (x - mean.numpy()) / (0.8 * local + 0.2 * x.std(axis=(1, 2), keepdims=True) + 1e-3)
    np.testing.assert_allclose(magnify(x).numpy(), expected, rtol=1e-4, atol=1e-4)
    flat = magnify(np.full((1, 16, 16, 3), 0.3, np.float32)).numpy()
    assert np.isfinite(flat).all() and np.abs(flat).max() < 1e-3
    shown = to_display([magnify(x).numpy(), 2 * magnify(x).numpy()])
    assert shown.min() == 0.0 and shown.max() == 1.0
    with pytest.raises(ValueError, match="beta"):
        magnify(x, beta=1.5)


def test_magnify_reveals_noise_but_not_smooth_perturbation(crops):
    """The point of Fig. 1: i.i.d. noise is magnified into view; a smooth-like-x perturbation much less."""
    from smoothadv_tf.smoothing import Smoother

    x = photo("chelsea", 64)[None]
    noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    noise *= 1.0 / np.linalg.norm(noise)
    smooth = Smoother(x, alpha=0.997, iterations=100)(noise).numpy()
    smooth *= 1.0 / np.linalg.norm(smooth)
    base = magnify(x).numpy()
    change_noise = np.abs(magnify(np.clip(x + noise, 0, 1)).numpy() - base).mean()
    change_smooth = np.abs(magnify(np.clip(x + smooth, 0, 1)).numpy() - base).mean()
    assert change_smooth < 0.5 * change_noise, (change_smooth, change_noise)
    assert tf.reduce_all(tf.math.is_finite(base))
