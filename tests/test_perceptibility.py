"""SSIM and PSNR (perceptibility.py) against scikit-image on real images: Fashion-MNIST and bundled photos."""

import json

import numpy as np
import pytest
from conftest import photos
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from smoothadv_tf import perceptibility

# TF computes SSIM in float32, scikit-image in float64: measured max |difference| 3.7e-5 on Fashion-MNIST
# (7-tap window), 8.4e-6 on the 299-pixel photos (11 taps). A σ = 1.5 Gaussian cut to 7 taps instead would
# differ from scikit-image's σ = 1.5 by up to 0.096 on the same images.
SSIM_TOL = 1e-4


def quantised(x):
    return (np.round(np.clip(x, 0, 1) * 255) / 255).astype(np.float32)


def perturbed(x, seed=0):
    """Two real perturbations of 8-bit images, judged as 8-bit images: Gaussian noise and a blur."""
    noise = quantised(x + np.random.default_rng(seed).normal(0, 0.05, x.shape))
    blur = quantised(gaussian_filter(x, (0, 1, 1, 0)))
    return {"noise": noise, "blur": blur}


def skimage_ssim(x, x_adv):
    size, sigma = perceptibility.ssim_window(*x.shape[1:3])
    options = dict(win_size=size, gaussian_weights=True, sigma=sigma, use_sample_covariance=False, data_range=1.0)
    if x.shape[-1] == 1:
        return np.array([structural_similarity(a[..., 0], b[..., 0], **options) for a, b in zip(x, x_adv)])
    return np.array([structural_similarity(a, b, channel_axis=-1, **options) for a, b in zip(x, x_adv)])


def skimage_psnr(x, x_adv):
    return np.array([peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(x, x_adv)])


def check_against_skimage(x, x_adv):
    ssim, psnr = perceptibility.ssim(x, x_adv), perceptibility.psnr(x, x_adv)
    assert ssim.shape == psnr.shape == (len(x),) and ssim.dtype == psnr.dtype == np.float64
    x64, adv64 = x.astype(np.float64), x_adv.astype(np.float64)
    np.testing.assert_allclose(ssim, skimage_ssim(x64, adv64), rtol=0, atol=SSIM_TOL)
    np.testing.assert_allclose(psnr, skimage_psnr(x64, adv64), rtol=1e-12)
    return ssim, psnr


def test_window_rule():
    assert perceptibility.ssim_window(299, 299) == (11, 1.5)  # Wang et al.'s window
    assert perceptibility.ssim_window(28, 28) == (7, pytest.approx(1.5 * 7 / 11))
    sides = {3: 3, 12: 3, 19: 3, 20: 5, 28: 7, 32: 7, 36: 9, 43: 9, 44: 11, 224: 11}
    assert {side: perceptibility.ssim_window(side, 1000)[0] for side in sides} == sides
    assert perceptibility.ssim_window(299, 28)[0] == 7  # the smaller side
    for size in (3, 5, 7, 9, 11):  # scikit-image cuts its Gaussian at 3.5 σ: the same taps for our σ
        assert 2 * int(3.5 * perceptibility.SIGMA_PER_TAP * size + 0.5) + 1 == size
    with pytest.raises(ValueError, match="at least 3x3"):
        perceptibility.ssim_window(2, 28)


def test_fashion_mnist_matches_skimage(fashion_test):
    x = fashion_test.images[:200]
    results = {name: check_against_skimage(x, x_adv) for name, x_adv in perturbed(x).items()}
    for ssim, psnr in results.values():  # real perturbations: visibly below identical, not degenerate
        assert 0.2 < ssim.min() and ssim.max() < 0.99 and np.all(np.isfinite(psnr))
    # a stronger perturbation is less similar
    stronger = quantised(x + np.random.default_rng(0).normal(0, 0.1, x.shape))
    ssim2, psnr2 = check_against_skimage(x, stronger)
    assert np.all(ssim2 < results["noise"][0]) and np.all(psnr2 < results["noise"][1])


def test_photos_299_match_skimage():
    x = photos(299, 4)
    for x_adv in perturbed(x, seed=1).values():
        check_against_skimage(x, x_adv)


def test_identical_images():
    x = photos(299, 2)
    np.testing.assert_allclose(perceptibility.ssim(x, x), 1.0, atol=1e-6)
    psnr = perceptibility.psnr(x, x)
    assert np.all(np.isposinf(psnr))
    # records store +inf as JSON null (json.dumps would write the non-standard Infinity), finite values as is
    assert json.dumps([perceptibility.psnr_for_json(v) for v in (*psnr, 31.5)]) == "[null, null, 31.5]"
    one_level = x.copy()
    one_level[0, 0, 0, 0] += 1 / 255  # the smallest 8-bit change: finite
    assert np.isfinite(perceptibility.psnr(x, one_level)[0]) and np.isposinf(perceptibility.psnr(x, one_level)[1])


def test_shapes_are_checked():
    x = photos(64, 2)
    with pytest.raises(ValueError, match="same shape"):
        perceptibility.ssim(x, x[:1])
    with pytest.raises(ValueError, match="same shape"):
        perceptibility.psnr(x[0], x[0])
