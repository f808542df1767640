"""The six attacks on a C4 trained (briefly) on real Fashion-MNIST."""

import numpy as np
import pytest

from smoothadv_tf import attacks
from smoothadv_tf.smoothing import Smoother, smoothness


@pytest.fixture(scope="session")
def batch(fashion_test):
    return fashion_test.images[:40], fashion_test.labels[:40]


@pytest.fixture(scope="session")
def results(c4_model, batch):
    x, y = batch
    return {name: attacks.run_attack(name, c4_model, x, y, **attacks.preset("mnist", name)) for name in attacks.ATTACKS}


MIN_SUCCESS = {
    "fgsm": 0.6,
    "ifgsm": 0.95,
    "pgd2": 0.95,
    "carlini_wagner_l2": 0.95,
    "smooth_pgd2": 0.8,
    "smooth_carlini_wagner_l2": 0.95,
}


@pytest.mark.parametrize("name", list(attacks.ATTACKS))
def test_attack_succeeds_and_reports_consistently(name, results, batch, c4_model):
    x, y = batch
    r = results[name]
    ok = r.originally_correct
    assert ok.mean() > 0.7
    assert r.success[ok].mean() >= MIN_SUCCESS[name], r.success[ok].mean()
    adv = r.adversarial
    assert np.isfinite(adv).all() and adv.min() >= 0.0 and adv.max() <= 1.0
    np.testing.assert_allclose(adv * 255.0, np.round(adv * 255.0), atol=1e-3)  # 8-bit quantised
    # distortion is the L2 norm on [0,1] pixels of what was judged, and the prediction is the model's
    np.testing.assert_allclose(r.distortion, np.sqrt(((adv - x) ** 2).sum(axis=(1, 2, 3))), rtol=1e-5, atol=1e-6)
    pred = np.argmax(c4_model(adv).numpy(), -1)
    np.testing.assert_array_equal(r.prediction, pred)
    np.testing.assert_array_equal(r.success, pred != y)


def test_budgets_are_respected(results, batch):
    x, _ = batch
    linf = np.abs(results["ifgsm"].adversarial - x).max(axis=(1, 2, 3))
    assert linf.max() <= 0.3 + 0.5 / 255 + 1e-6  # ε plus the rounding
    assert results["pgd2"].distortion.max() <= 5.0 + 0.5 / 255 * np.sqrt(784) + 1e-4
    assert results["fgsm"].iterations.max() == 1


def test_optimality_attacks_beat_fgsm_distortion(results):
    both = results["fgsm"].success & results["carlini_wagner_l2"].success
    assert results["carlini_wagner_l2"].distortion[both].mean() < 0.5 * results["fgsm"].distortion[both].mean()


def test_smooth_carlini_wagner_is_smoother(results, batch):
    """sC&W's perturbations are smoother than C&W's and as smooth as ŝ_α makes anything on these images.

    C4's 8x8 stride-2 first layer already gives C&W fairly low-frequency perturbations (score ~0.24 against
    ~0.9 for white noise), so the gap to C&W is moderate (~0.7x measured); the sharp check is against the
    operator's own floor: smoothed white noise, scored on the same images."""
    x, _ = batch
    cw, scw = results["carlini_wagner_l2"], results["smooth_carlini_wagner_l2"]
    both = cw.success & scw.success & cw.originally_correct
    s_cw = smoothness(cw.adversarial - x, x).numpy()[both]
    s_scw = smoothness(scw.adversarial - x, x).numpy()[both]
    noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    floor = smoothness(Smoother(x, alpha=0.95, solver="dense")(noise), x).numpy()[both]
    assert s_scw.mean() < s_cw.mean() and (s_scw < s_cw).mean() > 0.7, (s_scw.mean(), s_cw.mean())
    assert s_scw.mean() < 1.2 * floor.mean() < s_cw.mean(), (s_scw.mean(), floor.mean(), s_cw.mean())


def test_smooth_pgd2_moves_within_the_smooth_range(c4_model, batch):
    x, y = batch
    # Unquantised, no clipping reached: the first sPGD₂ step is step * ŝ(g)/||ŝ(g)||, smooth like x_o
    r = attacks.smooth_pgd2(c4_model, x, y, epsilon=0.5, step=0.5, iterations=1, quantize=False)
    p = attacks.pgd2(c4_model, x, y, epsilon=0.5, step=0.5, iterations=1, quantize=False)
    assert smoothness(r.adversarial - x, x).numpy().mean() < 0.6 * smoothness(p.adversarial - x, x).numpy().mean()


def test_best_iterate_only_improves_with_more_iterations(c4_model, batch):
    """The loop is deterministic, so a run of N iterations replays the first N' < N of a longer one. Keeping
    the least-distortion success means more iterations never lose a success nor increase the distortion;
    keeping the last success (oscillating around the margin) would break this."""
    x, y = batch
    runs = [
        attacks.carlini_wagner_l2(
            c4_model,
            x,
            y,
            **attacks.preset("mnist", "carlini_wagner_l2", binary_search_steps=1, abort_early=False, iterations=n),
        )
        for n in (15, 40, 100)
    ]
    for short, long in zip(runs, runs[1:]):
        assert (long.success >= short.success).all()
        both = short.success & long.success & short.originally_correct
        assert both.sum() > 10
        assert (long.distortion[both] <= short.distortion[both] + 1e-6).all()
    assert (runs[-1].distortion[both] < runs[0].distortion[both] - 1e-3).mean() > 0.5  # it does improve


def test_targeted_mode_hits_the_target(c4_model, batch):
    x, y = batch
    target = (y + 1) % 10
    for name in ("pgd2", "carlini_wagner_l2", "smooth_carlini_wagner_l2"):
        params = attacks.preset("mnist", name, target=target)
        if name == "pgd2":
            params.update(iterations=30, step=0.5)
        r = attacks.run_attack(name, c4_model, x, y, **params)
        ok = r.originally_correct
        assert (r.prediction[ok & r.success] == target[ok & r.success]).all()
        assert r.success[ok].mean() > 0.8, (name, r.success[ok].mean())


def test_no_nan_with_flat_and_misclassified_images(c4_model, batch):
    x, y = batch
    flat = np.concatenate([np.zeros((2, 28, 28, 1), np.float32), np.ones((2, 28, 28, 1), np.float32)])
    images = np.concatenate([flat, x[:4]])
    pred = np.argmax(c4_model(images).numpy(), -1)
    labels = np.concatenate([(pred[:4] + 1) % 10, y[:4]])  # the flat images are "misclassified" by design
    for name in attacks.ATTACKS:
        r = attacks.run_attack(name, c4_model, images, labels, **attacks.preset("mnist", name))
        assert np.isfinite(r.adversarial).all() and np.isfinite(r.distortion).all()
        assert not r.originally_correct[:4].any()
        np.testing.assert_array_equal(r.adversarial[:4], images[:4])  # reported, not attacked
        assert (r.iterations[:4] == 0).all()


def test_zero_budget_and_bad_input(c4_model, batch):
    x, y = batch
    r = attacks.carlini_wagner_l2(c4_model, x[:4], y[:4], initial_const=1e-6, binary_search_steps=1, iterations=5)
    assert np.isfinite(r.distortion).all()
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        attacks.fgsm(c4_model, x * 2, y)
    with pytest.raises(ValueError, match="labels"):
        attacks.fgsm(c4_model, x, y[:3])
    with pytest.raises(ValueError, match="preset"):
        attacks.preset("cifar", "fgsm")


def test_results_do_not_depend_on_batch_mates(c4_model, batch):
    """Resumed and sharded runs re-batch images: an image's result must not depend on the others (also with
    the per-image early abort)."""
    x, y = batch
    params = attacks.preset("mnist", "carlini_wagner_l2", iterations=40, binary_search_steps=2, abort_early=True)
    together = attacks.carlini_wagner_l2(c4_model, x[:20], y[:20], **params)
    alone = attacks.carlini_wagner_l2(c4_model, x[:8], y[:8], **params)
    np.testing.assert_array_equal(together.success[:8], alone.success)
    np.testing.assert_allclose(together.distortion[:8], alone.distortion, atol=1e-4)
    assert (together.iterations[:8] == alone.iterations).all()
    assert together.iterations[together.originally_correct].min() < 80  # the abort did stop some images
