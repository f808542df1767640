"""The L2 attacks beyond the paper (attacks.minimum_norm): DDN, FMN and PGD₂ on the latent z, plain and smooth,
on real Fashion-MNIST; DDN and FMN against foolbox 3.3.4's DDNAttack / L2FMNAttack on the same model and images."""

from __future__ import annotations

import numpy as np
import pytest

from smoothadv_tf import attacks
from smoothadv_tf.smoothing import smoothness


def _correct(model, x, y):
    return np.argmax(model(x).numpy(), -1) == y


def test_pgd_rule_on_the_identity_map_is_pgd2_exactly(c4_model, fashion_test):
    """The rescaling loop with r = δ and a fixed ball is PGD₂ (eq. 10-11): same images, bit for bit, and the same
    step counts — the lazy projection (scale at the start of the next iteration) is the projection."""
    x, y = fashion_test.images[:40], fashion_test.labels[:40]
    p = attacks.preset("mnist", "pgd2", epsilon=2.0)
    plain = attacks.pgd2(c4_model, x, y, **p)
    loop = attacks._rescaling_attack(
        c4_model, x, y, rule="pgd", iterations=p["iterations"], epsilon=2.0, max_step=p["step"], min_step=p["step"]
    )
    assert np.array_equal(plain.adversarial, loop.adversarial)
    assert np.array_equal(plain.iterations, loop.iterations) and np.array_equal(plain.success, loop.success)
    assert 0.2 < plain.p_suc < 1.0  # ε = 2 leaves both successes and failures to compare


def _foolbox(model, attack, x, y):
    import foolbox as fb
    import tensorflow as tf

    fmodel = fb.TensorFlowModel(model, bounds=(0, 1))
    return attack.run(fmodel, tf.constant(x), fb.criteria.Misclassification(tf.constant(y))).numpy()


def _judged(model, x, y, images):
    """(success, distortion) of images as given and as 8-bit PNGs store them, over the correctly classified."""
    out = {}
    for label, im in (("raw", images), ("8-bit", np.round(images * 255) / 255)):
        success = (np.argmax(model(im).numpy(), -1) != y) & _correct(model, x, y)
        out[label] = success, np.sqrt(((im - x) ** 2).sum(axis=(1, 2, 3)))
    return out


@pytest.mark.slow
def test_ddn_matches_foolbox_and_keeps_its_successes_in_8_bit(c4_model, fashion_test):
    """Same model, images and budget (foolbox's defaults: 100 steps, ε₀ = 1, γ = 0.05). foolbox judges raw floats
    and loses successes once its images are stored as 8-bit; ours judges the 8-bit image at every step."""
    import foolbox as fb

    x, y = fashion_test.images[:40], fashion_test.labels[:40]
    ours = attacks.ddn(c4_model, x, y, **attacks.preset("mnist", "ddn"))
    peer = _judged(c4_model, x, y, _foolbox(c4_model, fb.attacks.DDNAttack(), x, y))
    peer_success, peer_d = peer["raw"]
    assert ours.p_suc >= 0.99 and ours.p_suc >= peer_success[ours.originally_correct].mean()
    assert (
        peer["8-bit"][0].sum() < peer_success.sum()
    )  # foolbox's 8-bit images lose successes: why judging 8-bit matters
    both = ours.success & peer_success
    assert both.sum() >= 0.9 * ours.originally_correct.sum()
    ratio = ours.distortion[both].mean() / peer_d[both].mean()
    assert abs(ratio - 1) <= 0.03, ratio


FMN_MEASURED_D = 1.068  # D̄ of FMN (mnist preset) on the first 40 test images: see the test below


@pytest.mark.slow
def test_fmn_succeeds_in_8_bit_with_less_distortion_than_foolboxs(c4_model, fashion_test):
    """foolbox 3.3.4's L2FMNAttack never projects on its ε-ball (its project() scales by ||x|| / ||x|| = 1), so it
    is normalised gradient descent keeping the least-norm adversarial iterate; ours enforces the ball after the
    first success and must find smaller perturbations on the images both fool, at full 8-bit success."""
    import foolbox as fb

    x, y = fashion_test.images[:40], fashion_test.labels[:40]
    ours = attacks.fmn(c4_model, x, y, **attacks.preset("mnist", "fmn"))
    peer_success, peer_d = _judged(c4_model, x, y, _foolbox(c4_model, fb.attacks.L2FMNAttack(), x, y))["raw"]
    assert ours.p_suc >= 0.99 and ours.p_suc >= peer_success[ours.originally_correct].mean()
    both = ours.success & peer_success
    assert ours.distortion[both].mean() < 0.8 * peer_d[both].mean()
    # foolbox's FMN is broken (above), so beating it bounds nothing: FMN is also pinned to its own D̄ on these
    # images, measured with this session's C4 (1 epoch on 30,000 images, seed 0): 1.068 over 35 successes,
    # P_suc 1.000 (oneDNN on, TensorFlow's default here); 1.053 with TF_ENABLE_ONEDNN_OPTS=0, whose rounding
    # trains a slightly different C4 (-1.4 %). 5 % either way is over 3x that machine-to-machine spread and
    # flags a regression of the loop far below the 20 % the foolbox comparison lets through.
    assert abs(ours.mean_distortion / FMN_MEASURED_D - 1) <= 0.05, ours.mean_distortion


@pytest.mark.parametrize(
    "plain, smooth",
    [("ddn", "smooth_ddn"), ("fmn", "smooth_fmn"), ("pgd2", "smooth_pgd2_latent")],
)
def test_smooth_twins_succeed_smoother_and_alone(plain, smooth, c4_model, fashion_test):
    """On real images (a budget of 30 steps): each smooth attack fools C4 and its perturbations are smoother than
    its plain twin's (smoothness score over the images both fool); the result of an image does not depend on
    its batch-mates; a misclassified image and a flat one are reported, finite, not attacked / not NaN."""
    x, y = fashion_test.images[:24].copy(), fashion_test.labels[:24].copy()
    x[-1] = 0.5  # a flat image: the smoothing's graph has equal weights everywhere; attacked w.r.t. C4's label
    pred = np.argmax(c4_model(x).numpy(), -1)
    y[-1], y[-2] = pred[-1], (pred[-2] + 1) % 10  # ... and a misclassified one, by design
    wrong = ~_correct(c4_model, x, y)
    assert wrong[-2] and not wrong[-1]
    budget = {"iterations": 30} if plain != "pgd2" else {"epsilon": 3.0}
    a = attacks.run_attack(plain, c4_model, x, y, **attacks.preset("mnist", plain, **budget))
    b = attacks.run_attack(smooth, c4_model, x, y, **attacks.preset("mnist", smooth, **budget))
    assert np.isfinite(b.adversarial).all() and np.isfinite(b.distortion).all()
    assert b.p_suc >= 0.9, b.p_suc
    assert not b.success[wrong].any() and (b.iterations[wrong] == 0).all()
    both = a.success & b.success
    smooth_a = smoothness(a.adversarial - x, x).numpy()[both].mean()
    smooth_b = smoothness(b.adversarial - x, x).numpy()[both].mean()
    assert smooth_b < 0.5 * smooth_a, (smooth_a, smooth_b)
    if smooth == "smooth_pgd2_latent":  # the exact projection: within the ε-ball up to the 8-bit rounding
        assert (b.distortion <= 3.0 + 0.5 / 255 * np.sqrt(28 * 28) + 1e-6).all()
    assert b.iterations[-1] > 0 and np.isfinite(b.adversarial[-1]).all()  # the flat image was attacked
    # alone vs in the batch: the same decisions; distortions within 1e-3 (TF's kernels may round differently
    # for another batch size, as in test_attacks.test_results_do_not_depend_on_batch_mates)
    alone = attacks.run_attack(smooth, c4_model, x[3:5], y[3:5], **attacks.preset("mnist", smooth, **budget))
    assert np.array_equal(alone.success, b.success[3:5])
    np.testing.assert_allclose(alone.distortion, b.distortion[3:5], atol=1e-3)


def test_new_attacks_refuse_bad_budgets(c4_model, fashion_test):
    x, y = fashion_test.images[:2], fashion_test.labels[:2]
    with pytest.raises(ValueError, match="gamma"):
        attacks.ddn(c4_model, x, y, gamma=1.5)
    with pytest.raises(ValueError, match="min_step"):
        attacks.fmn(c4_model, x, y, min_step=2.0)
    with pytest.raises(ValueError, match="gamma=1.5: must be in \\(0, 1\\)"):
        attacks.check_params("smooth_fmn", {"gamma": 1.5})


def test_image_direction_lands_closer_and_stays_smooth(c4_model, fashion_test):
    """direction="image" (z along ∇ₓℓ: r moves along ŝ_α∇ₓℓ, smoothed once) against the default "latent" (z along
    ŝ_αᵀ∇ₓℓ, eq. 19: r smoothed twice), sDDN on real images, 30 steps: both fool C4; on the images both fool the
    image direction's D̄ is lower and its smoothness lies between the latent direction's and plain DDN's."""
    x, y = fashion_test.images[:24], fashion_test.labels[:24]
    plain = attacks.ddn(c4_model, x, y, iterations=30)
    latent = attacks.smooth_ddn(c4_model, x, y, iterations=30, solver="dense")
    image = attacks.smooth_ddn(c4_model, x, y, iterations=30, solver="dense", direction="image")
    assert latent.p_suc >= 0.9 and image.p_suc >= 0.9, (latent.p_suc, image.p_suc)
    both = plain.success & latent.success & image.success
    d_latent, d_image = latent.distortion[both].mean(), image.distortion[both].mean()
    assert d_image < d_latent, (d_image, d_latent)
    score = {k: smoothness(r.adversarial - x, x).numpy()[both].mean() for k, r in zip("pli", (plain, latent, image))}
    assert score["l"] < score["i"] < score["p"], score
    with pytest.raises(ValueError, match="direction='z'"):
        attacks.smooth_ddn(c4_model, x[:2], y[:2], direction="z")
    with pytest.raises(ValueError, match="direction='z': expected one of"):
        attacks.check_params("smooth_fmn", {"direction": "z"})
