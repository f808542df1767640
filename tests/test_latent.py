"""attacks.SmoothLatent, the public latent-smoothing block (eq. 9, 17, 19), on real Fashion-MNIST and photos."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

from smoothadv_tf import attacks
from smoothadv_tf.smoothing import smoothness


# The README's snippet (between <!-- latent-snippet --> and <!-- /latent-snippet -->), given `model`, `x`, `y`:
# a user's own L2 PGD loop on the cross-entropy made smooth; the plain version of each line is in its comment.
def readme_snippet() -> str:
    """The README's latent-smoothing snippet, as a user reads it."""
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    return re.search(r"<!-- latent-snippet -->\n```python\n(.*?)```\n<!-- /latent-snippet -->", readme, re.S).group(1)


def _norms(r) -> np.ndarray:
    return np.sqrt((np.asarray(r, np.float64) ** 2).sum(axis=(1, 2, 3)))


def _latents(x, count: int) -> np.ndarray:
    """Random latents, the last one zero."""
    z = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)[:count]
    z[-1] = 0.0
    return z


@pytest.mark.parametrize("source", ["fashion", "photos"])
def test_rescale_and_project_meet_the_radius_exactly(source, fashion_test):
    """Per image, ||ŝ_α(rescale(z, ρ))|| = ρ and ||ŝ_α(project(z, ρ))|| = min(||ŝ_α(z)||, ρ) to float32 precision,
    with the dense solver (28 x 28) and CG (80 x 80 photos); z = 0 stays 0; project leaves z inside the ball."""
    from conftest import photos

    x = fashion_test.images[:6] if source == "fashion" else photos(80, 3)
    latent = attacks.SmoothLatent(x, alpha=0.95, solver="dense" if source == "fashion" else "cg")
    z = _latents(x, len(x))
    before = _norms(latent.perturbation(z))
    assert before[-1] == 0 and (before[:-1] > 0).all()
    radius = (before * np.linspace(0.3, 2.0, len(x))).astype(np.float32)  # shrink the first, grow the others
    radius[-1] = 1.0
    rescaled = latent.rescale(z, radius).numpy()
    np.testing.assert_allclose(_norms(latent.perturbation(rescaled))[:-1], radius[:-1], rtol=2e-6)
    projected = latent.project(z, radius).numpy()
    np.testing.assert_allclose(_norms(latent.perturbation(projected)), np.minimum(before, radius), rtol=2e-6)
    outside = before > radius
    assert outside[0] and not outside[-2]
    np.testing.assert_array_equal(projected[~outside], z[~outside])  # inside the ball: untouched
    assert not rescaled[-1].any() and not projected[-1].any() and np.isfinite(rescaled).all()
    # a scalar radius, and the norm method agree
    np.testing.assert_allclose(latent.norm(latent.rescale(z, 0.5)).numpy()[:-1], 0.5, rtol=2e-6)


@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_gradients_match_finite_differences(solver, fashion_test):
    """d/dz of ||ŝ_α(z)||² and of a linear functional <w, ŝ_α(z)> (eq. 19) against central differences, on
    8 x 8 crops of real images; the linear functional's gradient ŝ_αᵀ w is the same at z = 0."""
    x = fashion_test.images[:2, 10:18, 10:18]
    latent = attacks.SmoothLatent(x, solver=solver)
    w = tf.constant(np.random.default_rng(1).standard_normal(x.shape).astype(np.float32))
    z = tf.constant(_latents(x, 2) + 0.5)  # both non-zero

    def linear(v):
        return tf.reduce_sum(w * latent.perturbation(v), axis=[1, 2, 3])

    def both(v):  # one finite-difference pass for both functions
        return tf.concat([tf.reduce_sum(tf.square(latent.perturbation(v)), axis=[1, 2, 3]), linear(v)], 0)

    (theoretical,), (numerical,) = tf.test.compute_gradient(both, [z], delta=1e-2)
    for rows in (slice(0, 2), slice(2, 4)):  # ||ŝ_α(z)||², then <w, ŝ_α(z)>
        scale = np.abs(theoretical[rows]).max()
        assert scale > 0
        np.testing.assert_allclose(theoretical[rows], numerical[rows], atol=2e-3 * scale)

    def grad_at(v):
        v = tf.constant(v)
        with tf.GradientTape() as tape:
            tape.watch(v)
            value = tf.reduce_sum(linear(v))
        return tape.gradient(value, v).numpy()

    at_zero, elsewhere = grad_at(np.zeros(x.shape, np.float32)), grad_at(z.numpy())
    assert np.abs(at_zero).max() > 0
    np.testing.assert_allclose(at_zero, elsewhere, atol=1e-5 * np.abs(elsewhere).max())


@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_zero_latent_gives_finite_values_and_gradients(solver, fashion_test):
    """At z = 0 (where eq. 18 starts) the image is x_o, ||r|| = 0, rescale/project keep 0, and the gradients of
    the loss through image(), norm(), rescale() and project() are finite; the image's is non-zero."""
    x = fashion_test.images[:2, 10:18, 10:18]  # the shape of the test above: no new XLA compilation
    latent = attacks.SmoothLatent(x, solver=solver)
    z = latent.zeros()
    w = tf.constant(np.random.default_rng(2).standard_normal(x.shape).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        image = latent.image(z)
        outputs = {
            "image": tf.reduce_sum(w * image),
            "norm": tf.reduce_sum(latent.norm(z)),
            "rescale": tf.reduce_sum(w * latent.rescale(z, 2.0)),
            "project": tf.reduce_sum(w * latent.project(z, 2.0)),
        }
    np.testing.assert_array_equal(image.numpy(), x)
    for name, value in outputs.items():
        grad = tape.gradient(value, z)
        assert np.isfinite(value.numpy()) and np.isfinite(grad.numpy()).all(), name
    assert np.abs(tape.gradient(outputs["image"], z).numpy()).max() > 0
    assert not latent.rescale(z, 2.0).numpy().any() and not latent.project(z, 2.0).numpy().any()


def test_works_inside_tf_function(fashion_test):
    """Built and used inside a tf.function (as the smooth attacks do), it gives the eager results."""
    x = fashion_test.images[:4]
    z = tf.constant(_latents(x, 4))

    @tf.function
    def traced(x, z):
        latent = attacks.SmoothLatent(x)
        return latent.project(z, 1.0), latent.image(z)

    latent = attacks.SmoothLatent(x)
    for got, expected in zip(traced(tf.constant(x), z), (latent.project(z, 1.0), latent.image(z))):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_snippet_makes_a_plain_pgd_loop_smooth(c4_model, fashion_test):
    """The README snippet, run as written on 20 real images: it fools C4 on most correctly classified ones,
    within its L2 budget, with a perturbation much smoother than PGD₂'s (same budget and steps)."""
    x, y = fashion_test.images[:20], fashion_test.labels[:20]
    namespace = {"model": c4_model, "x": x, "y": y}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    x_adv = namespace["x_adv"]
    correct = np.argmax(c4_model(x).numpy(), -1) == y
    fooled = np.argmax(c4_model(x_adv).numpy(), -1) != y
    assert correct.sum() >= 15
    assert fooled[correct].mean() > 0.8, fooled[correct].mean()
    assert np.isfinite(x_adv).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert _norms(x_adv - x).max() <= 5.0 + 1e-4
    plain = attacks.pgd2(c4_model, x, y, epsilon=5.0, step=1.0, iterations=10, early_stop=False, quantize=False)
    both = correct & fooled & plain.success
    s_smooth = smoothness(x_adv - x, x).numpy()[both]
    s_plain = smoothness(plain.adversarial - x, x).numpy()[both]
    assert both.sum() >= 10
    assert s_smooth.mean() < 0.4 * s_plain.mean() and (s_smooth < s_plain).all(), (s_smooth, s_plain)
