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


def brute_magnify(x, beta, sigma_d, sigma_r, radius):
    """Eq. (22) in float64 NumPy, both bilateral filters by the double loop above (not the library's filter)."""
    mean = brute_bilateral(x, x, sigma_d, sigma_r, radius)
    local_std = np.sqrt(brute_bilateral((x - mean) ** 2, x, sigma_d, sigma_r, radius))
    global_std = x.astype(np.float64).std(axis=(0, 1))  # σ_Ω: population std per channel over Ω
    return (x - mean) / (beta * local_std + (1.0 - beta) * global_std)


def test_magnify_is_eq22_on_photo_crops(crops):
    # The paper's setting (β = 0.8, σ_d = 5 so a 25x25 window, σ_r = 0.2) on a batch of two real crops. The
    # tolerance is 1e-4 of the output's range: a constant 1e-3 added to the denominator moves it by ~1 %.
    x = np.stack(crops)
    ours = magnify(x).numpy()
    for i, crop in enumerate(crops):
        ref = brute_magnify(crop, 0.8, 5.0, 0.2, default_radius(5.0))
        err = np.abs(ours[i] - ref).max() / np.ptp(ref)
        assert err <= 1e-4, (i, err)


def test_magnify_constant_channel_is_zero_and_others_are_eq22(crops):
    # β = 1 (local std only), a small window, and channel 2 made constant: its denominator is 0 in exact
    # arithmetic, so mag is 0 there, while the other channels are still exactly eq. (22).
    x = crops[1].copy()
    x[..., 2] = 0.45
    ours = magnify(x[None], beta=1.0, sigma_d=1.5, radius=3).numpy()[0]
    ref = brute_magnify(x[..., :2], 1.0, 1.5, 0.2, 3)  # channel 2 adds 0 to the joint range distance
    assert np.abs(ours[..., :2] - ref).max() <= 1e-4 * np.ptp(ref)
    assert np.abs(ours[..., 2]).max() <= 1e-6


@pytest.mark.parametrize("value, size", [(0.3, 16), (0.7, 299), (1e-3, 64), (0.0, 16)])
def test_magnify_of_constant_image_is_zero(value, size):
    # 299x299 also checks σ_Ω: a float32 mean over that many pixels would leave σ_Ω ~1e-4 instead of 0.
    flat = magnify(np.full((1, size, size, 3), value, np.float32)).numpy()
    assert np.isfinite(flat).all() and np.abs(flat).max() <= 1e-6


def test_magnify_display_and_bad_beta(crops):
    m = magnify(crops[0][None]).numpy()
    assert m.min() < 0 < m.max()  # so the extremes of the set are those of 2m
    lo, hi = 2 * m.min(), 2 * m.max()
    shown = to_display([m, 2 * m])
    # one common affine map for the whole set, not one per image
    np.testing.assert_allclose(shown[0], (m - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(shown[1], (2 * m - lo) / (hi - lo), atol=1e-6)
    assert np.all(to_display(np.full((2, 4, 4, 3), 0.5)) == 0.0)
    with pytest.raises(ValueError, match="beta"):
        magnify(m, beta=1.5)


def test_magnify_reveals_noise_but_not_smooth_perturbation():
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
