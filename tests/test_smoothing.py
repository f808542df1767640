"""Graph (eq. 5) and Laplacian smoothing (eq. 8-9) against scipy and finite differences, plus the numerics."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import tensorflow as tf
from conftest import photos

import smoothadv_tf.smoothing as smoothing
from smoothadv_tf.graph import image_graph
from smoothadv_tf.layers import LaplacianSmoothing
from smoothadv_tf.smoothing import Smoother, apply_laplacian, conjugate_gradient, smoothness


def scipy_laplacian(graph, i, alpha, channel=0):
    """L_α built by scipy from the graph's own W (eq. 5) - the normalisation is recomputed here."""
    w = graph.to_scipy(i, channel).astype(np.float64)
    deg = np.maximum(np.asarray(w.sum(axis=1)).ravel(), 1e-20)
    d = sp.diags(1.0 / np.sqrt(deg))
    return ((sp.eye(w.shape[0]) - alpha * (d @ w @ d)) / (1.0 - alpha)).tocsc()


def brute_force_weights(x, sigma, kernel):
    """W by a double loop over pixel pairs in the 4-neighbourhood, joint distance over channels."""
    h, w, _ = x.shape
    n = h * w
    out = np.zeros((n, n))
    for y in range(h):
        for xx in range(w):
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                yy, x2 = y + dy, xx + dx
                if 0 <= yy < h and 0 <= x2 < w:
                    d = np.linalg.norm(x[y, xx].astype(np.float64) - x[yy, x2])
                    k = np.exp(-d / sigma) if kernel == "laplacian" else np.exp(-(d**2) / (2 * sigma**2))
                    out[y * w + xx, yy * w + x2] = k
    return out


@pytest.mark.parametrize("kernel", ["laplacian", "gaussian"])
def test_graph_matches_brute_force(kernel):
    x = photos(12, 1)[0]
    graph = image_graph(x[None], kernel=kernel, sigma=0.1)
    np.testing.assert_allclose(graph.to_scipy(0).toarray(), brute_force_weights(x, 0.1, kernel), rtol=1e-5, atol=1e-7)


def test_eight_neighbours_and_per_channel_graph():
    x = photos(10, 1)
    g8 = image_graph(x, neighbors=8).to_scipy(0)
    assert g8.nnz == 2 * (2 * 9 * 10 + 2 * 9 * 9)  # horizontal, vertical and two diagonal edge sets
    gpc = image_graph(x, mode="per_channel")
    assert gpc.weights.shape[-1] == 3
    # per-channel weights come from one channel's distance only
    expected = np.exp(-np.abs(x[0, 0, 1, 2] - x[0, 0, 0, 2]) / 0.1)
    np.testing.assert_allclose(gpc.to_scipy(0, channel=2)[0, 1], expected, rtol=1e-5)


@pytest.fixture(scope="module")
def photo299():
    return photos(299, 2)


def test_cg_matches_spsolve_on_real_photo(photo299):
    alpha = 0.95
    z = np.random.default_rng(0).standard_normal(photo299.shape).astype(np.float32)
    smoother = Smoother(photo299, alpha=alpha, iterations=300)
    ours = smoother.solve(z).numpy()
    for i in range(2):
        lap = scipy_laplacian(smoother.graph, i, alpha)
        for c in range(3):
            ref = sla.spsolve(lap, z[i, ..., c].ravel().astype(np.float64))
            err = np.linalg.norm(ours[i, ..., c].ravel() - ref) / np.linalg.norm(ref)
            assert err <= 1e-4, (i, c, err)


def test_fifty_iterations_match_scipy_cg(photo299):
    alpha = 0.997  # the ImageNet setting: 50 iterations are far from converged, so truncation must match
    z = np.random.default_rng(1).standard_normal(photo299.shape).astype(np.float32)
    smoother = Smoother(photo299, alpha=alpha, iterations=50)
    ours = smoother.solve(z).numpy()
    lap = scipy_laplacian(smoother.graph, 0, alpha)
    ref, _ = sla.cg(lap, z[0, ..., 1].ravel().astype(np.float64), rtol=0.0, atol=0.0, maxiter=50)
    exact = sla.spsolve(lap, z[0, ..., 1].ravel().astype(np.float64))
    err = np.linalg.norm(ours[0, ..., 1].ravel() - ref) / np.linalg.norm(ref)
    assert err <= 1e-3, err
    # and the truncation is real: 50 iterations are measurably away from the exact solve
    assert np.linalg.norm(ref - exact) / np.linalg.norm(exact) > 10 * err


@pytest.mark.parametrize("mode", ["joint", "per_channel"])
def test_dense_matches_converged_cg_on_fashion_mnist(fashion_test, mode):
    x = fashion_test.images[:3]
    z = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    dense = Smoother(x, alpha=0.95, solver="dense", mode=mode)(z)
    cg = Smoother(x, alpha=0.95, iterations=400, mode=mode)(z)
    np.testing.assert_allclose(dense.numpy(), cg.numpy(), atol=2e-5)


def random_walk_laplacian(graph, i, alpha):
    """A wrongly normalised L_α: D^-1 W (random walk) instead of D^-1/2 W D^-1/2 (§3). It too maps constants
    to constants once normalised by eq. (9) (here even before: L 1 = 1), so constants alone cannot tell."""
    w = graph.to_scipy(i).astype(np.float64)
    deg = np.maximum(np.asarray(w.sum(axis=1)).ravel(), 1e-20)
    return ((sp.eye(w.shape[0]) - alpha * (sp.diags(1.0 / deg) @ w)) / (1.0 - alpha)).tocsc()


def hat_s(lap, z):
    """ŝ_α(z) = diag(s_α(1))^-1 s_α(z) of eq. (9), by scipy's sparse solve of eq. (8)."""
    return sla.spsolve(lap, z) / sla.spsolve(lap, np.ones(lap.shape[0]))


@pytest.mark.parametrize("solver", ["cg", "chebyshev", "dense"])
def test_normalised_smoothing_preserves_constants(fashion_test, solver):
    """ŝ_α(c·1) = c·1 holds by construction for any L_α (eq. 9 divides by s_α(1)), so the test also checks
    that it is *this* L_α's ŝ_α: on a non-constant signal, equal to scipy's solve of eq. (8)-(9) with L_α built
    from the graph (float64) and far from a wrongly normalised L_α's, which preserves constants just as well.
    50 CG iterations at α = 0.95 on 28 x 28 are converged (CG's bound: ~1e-7 relative)."""
    x = fashion_test.images[:2]
    s = Smoother(x, alpha=0.95, solver=solver, iterations=50)
    np.testing.assert_allclose(s(np.ones_like(x)).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(s(2.5 * np.ones_like(x)).numpy(), 2.5, atol=3e-5)
    z = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    ours = s(z).numpy()
    for i in range(len(x)):
        right = hat_s(scipy_laplacian(s.graph, i, 0.95), z[i].ravel().astype(np.float64))
        wrong_lap = random_walk_laplacian(s.graph, i, 0.95)
        np.testing.assert_allclose(hat_s(wrong_lap, np.full(wrong_lap.shape[0], 2.5)), 2.5, rtol=1e-9)  # constants
        wrong = hat_s(wrong_lap, z[i].ravel().astype(np.float64))
        err = np.linalg.norm(ours[i].ravel() - right) / np.linalg.norm(right)
        assert err <= 1e-4, (i, err)
        gap = np.linalg.norm(wrong - right) / np.linalg.norm(right)
        assert gap > 100 * 1e-4, gap  # the wrong L_α would fail the tolerance above by far


def test_laplacian_is_symmetric_positive_definite(fashion_test):
    s = Smoother(fashion_test.images[:1], alpha=0.95)
    lap = scipy_laplacian(s.graph, 0, 0.95).toarray()
    np.testing.assert_allclose(lap, lap.T, atol=1e-6)
    eig = np.linalg.eigvalsh(lap)
    assert eig.min() >= 1.0 - 1e-6 and eig.max() <= 1.95 / 0.05 + 1e-3
    # and the stencil product v -> L_α v is that matrix
    v = np.random.default_rng(3).standard_normal((1, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(s.laplacian(tf.constant(v)).numpy().ravel(), lap @ v.ravel(), rtol=1e-4, atol=1e-4)


def test_alpha_zero_is_identity(fashion_test):
    x = fashion_test.images[:2]
    z = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(Smoother(x, alpha=0.0)(z).numpy(), z)


@pytest.mark.parametrize(
    "solver, gradient", [("cg", "autodiff"), ("cg", "implicit"), ("chebyshev", "autodiff"), ("dense", "autodiff")]
)
def test_gradient_matches_finite_differences(solver, gradient):
    x = photos(6, 1)
    z0 = np.random.default_rng(5).standard_normal((1, 6, 6, 3))
    weights = tf.constant(np.random.default_rng(6).standard_normal((1, 6, 6, 3)), tf.float64)

    def f(z):
        s = Smoother(x, alpha=0.9, solver=solver, iterations=40, gradient=gradient)
        return tf.reduce_sum(tf.cast(s(tf.cast(z, tf.float32)), tf.float64) * weights)

    theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(z0, tf.float64)], delta=1e-2)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


def _autodiff_reference(smoother, z, g):
    """TF's own autodiff through the plain (uncompiled) CG iterations: the oracle for the hand-written reverse."""
    graph = smoother.graph
    with tf.GradientTape() as tape:
        tape.watch(z)
        x = conjugate_gradient(
            lambda v: apply_laplacian(graph.normalized, graph.offsets, smoother.alpha, v),
            z,
            smoother.iterations,
            smoother.tol,
        )
    return x, tape.gradient(x, z, output_gradients=g)


@pytest.mark.parametrize(
    "alpha, iterations, tol",
    [(0.997, 50, 0.0), (0.95, 7, 0.0), (0.5, 200, 0.0), (0.95, 60, 1e-3)],
    ids=["imagenet-preset", "few-steps", "converges-and-freezes", "early-stop"],
)
def test_hand_written_reverse_pass_equals_tf_autodiff(alpha, iterations, tol):
    x = photos(24, 3)  # real photos; 200 steps at alpha 0.5 freeze every column long before the end
    rng = np.random.default_rng(11)
    z = tf.constant(rng.standard_normal(x.shape), tf.float32)
    g = tf.constant(rng.standard_normal(x.shape), tf.float32)
    smoother = Smoother(x, alpha=alpha, iterations=iterations, tol=tol, gradient="autodiff")
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = smoother.solve(z)
    grad = tape.gradient(out, z, output_gradients=g)
    ref_out, ref_grad = _autodiff_reference(smoother, z, g)
    assert np.linalg.norm(out - ref_out) <= 1e-5 * np.linalg.norm(ref_out)
    assert np.linalg.norm(grad - ref_grad) <= 1e-5 * np.linalg.norm(ref_grad)


@pytest.mark.parametrize("mode", ["joint", "per_channel"])
def test_batch_split_into_chunks_gives_the_same_values_and_gradients(monkeypatch, mode):
    x = photos(16, 5)
    rng = np.random.default_rng(12)
    z = tf.constant(rng.standard_normal(x.shape), tf.float32)
    g = tf.constant(rng.standard_normal(x.shape), tf.float32)
    splits = {  # chunk_elements -> pieces: runs of 2 images (2 + 2 + 1); channels 0-1 and 2 of each image; whole
        16 * 16 * 3 * 2: 3,
        16 * 16 * 2: 10,
        2**20: 1,
    }
    results = {}
    for chunk, pieces in splits.items():
        monkeypatch.setattr(smoothing, "CHUNK_ELEMENTS", chunk)
        assert sum(len(runs) for _, runs in smoothing._chunks(tf.TensorShape(x.shape), chunk)) == pieces
        for gradient in ("autodiff", "implicit"):
            smoother = Smoother(x, alpha=0.99, iterations=30, gradient=gradient, mode=mode)
            with tf.GradientTape() as tape:
                tape.watch(z)
                out = smoother(z)
            results[chunk, gradient] = out.numpy(), tape.gradient(out, z, output_gradients=g).numpy()
    for chunk in list(splits)[:2]:
        for gradient in ("autodiff", "implicit"):
            for chunked, whole in zip(results[chunk, gradient], results[2**20, gradient]):
                np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_stop_gradient_gives_the_value_without_a_gradient(fashion_test):
    x = fashion_test.images[:2]
    z = tf.constant(np.random.default_rng(13).standard_normal(x.shape), tf.float32)
    smoother = Smoother(x, alpha=0.95, iterations=20)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        out = smoother(z)
        out_constant = smoother(z, stop_gradient=True)
    # two differently compiled solves (with and without the recorded trajectory): equal up to rounding only
    np.testing.assert_allclose(out.numpy(), out_constant.numpy(), rtol=1e-6, atol=1e-7)
    assert tape.gradient(out_constant, z) is None
    assert float(tf.reduce_max(tf.abs(tape.gradient(out, z)))) > 0


@pytest.mark.parametrize("shape", [(2, 299, 299, 3), (3, 28, 28, 1), (1, 7, 5, 2)])
def test_lane_inner_product_matches_float64_sum(shape):
    rng = np.random.default_rng(14)
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    ours = tf.function(smoothing._dot, jit_compile=True)(tf.constant(a, tf.float32), tf.constant(b, tf.float32))
    ref = np.sum(a * b, axis=(1, 2), keepdims=True)
    scale = np.sqrt(np.sum(a * a, axis=(1, 2), keepdims=True) * np.sum(b * b, axis=(1, 2), keepdims=True))
    assert ours.shape == ref.shape
    assert np.all(np.abs(ours.numpy() - ref) <= 1e-6 * scale)


def _finite(*tensors):
    return all(bool(tf.reduce_all(tf.math.is_finite(t))) for t in tensors)


@pytest.mark.parametrize("gradient", ["autodiff", "implicit"])
def test_zero_signal_gives_zero_and_finite_gradient(fashion_test, gradient):
    x = fashion_test.images[:2]
    z = tf.zeros_like(x)
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = Smoother(x, alpha=0.997, gradient=gradient)(z)
        loss = tf.reduce_sum(out * out) + tf.reduce_sum(out)
    grad = tape.gradient(loss, z)
    assert np.all(out.numpy() == 0.0)
    assert _finite(grad) and float(tf.reduce_max(tf.abs(grad))) > 0


@pytest.mark.parametrize("gradient", ["autodiff", "implicit"])
def test_more_iterations_than_needed_stay_finite(gradient):
    x = photos(8, 1)
    z = tf.constant(np.random.default_rng(7).standard_normal((1, 8, 8, 3)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = Smoother(x, alpha=0.5, iterations=200, gradient=gradient)(z)
        loss = tf.reduce_sum(out**2)
    grad = tape.gradient(loss, z)
    ref = Smoother(x, alpha=0.5, iterations=64)(z)
    assert _finite(out, grad)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5)


FLAT = np.full((1, 8, 8, 3), 0.5, np.float32)
ISOLATED = np.zeros((1, 8, 8, 3), np.float32)
ISOLATED[0, 4, 4] = 1.0  # its four edges weigh exp(-sqrt(3)/sigma): underflows with a small sigma
CHECKERBOARD = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)[None, ..., None].repeat(3, -1)


@pytest.mark.parametrize("image", [FLAT, ISOLATED, CHECKERBOARD], ids=["flat", "isolated", "checkerboard"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.95, 0.997, 0.999])
@pytest.mark.parametrize("solver", ["cg", "chebyshev", "dense"])
def test_degenerate_images_stay_finite(image, alpha, solver):
    z = tf.constant(np.random.default_rng(8).standard_normal(image.shape), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = Smoother(image, alpha=alpha, solver=solver, sigma=0.001, gradient="autodiff")(z)
        loss = tf.reduce_sum(out**2)
    assert _finite(out, tape.gradient(loss, z))


def test_isolated_pixel_is_left_alone():
    z = np.zeros_like(ISOLATED)
    z[0, 4, 4] = 1.0
    out = Smoother(ISOLATED, alpha=0.95, sigma=0.001, iterations=100)(z).numpy()
    # the pixel keeps its value in every channel and nothing leaks to its neighbours
    np.testing.assert_allclose(out, z, atol=1e-5)
    assert abs(np.abs(out).sum() - 3.0) < 1e-4


def test_layer_inside_keras_model_and_tf_function(fashion_test):
    import keras

    x = fashion_test.images[:2]
    z = np.random.default_rng(9).standard_normal(x.shape).astype(np.float32)
    zin, xin = keras.Input((28, 28, 1), batch_size=2), keras.Input((28, 28, 1), batch_size=2)
    model = keras.Model([zin, xin], LaplacianSmoothing(alpha=0.95, iterations=50)([zin, xin]))
    expected = Smoother(x, alpha=0.95, iterations=50)(z).numpy()
    np.testing.assert_allclose(model([z, x]).numpy(), expected, atol=1e-5)
    compiled = tf.function(lambda a, b: model([a, b]))
    np.testing.assert_allclose(compiled(z, x).numpy(), expected, atol=1e-5)


def test_smoothness_score(fashion_test):
    x = fashion_test.images[:1]
    noise = np.random.default_rng(10).standard_normal(x.shape).astype(np.float32)
    smooth = Smoother(x, alpha=0.95, solver="dense")(noise)
    rough, soft = smoothness(noise, x).numpy()[0], smoothness(smooth, x).numpy()[0]
    assert 0.5 < rough < 1.5 and soft < 0.2 * rough
    assert smoothness(np.zeros_like(x), x).numpy()[0] == 0.0
    # the quadratic form equals the one scipy computes from W
    w = image_graph(x).to_scipy(0, normalized=True)
    r = noise.ravel().astype(np.float64)
    np.testing.assert_allclose(rough, (r @ r - r @ (w @ r)) / (r @ r), rtol=1e-4)


def test_invalid_input_raises_clear_errors(fashion_test):
    x = fashion_test.images[:2]
    with pytest.raises(ValueError, match="alpha"):
        Smoother(x, alpha=1.0)
    with pytest.raises(ValueError, match="4-D"):
        Smoother(x[0], alpha=0.5)
    bad = x.copy()
    bad[1, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Smoother(bad, alpha=0.5)
    s = Smoother(x, alpha=0.5)
    with pytest.raises(ValueError, match="does not match"):
        s(np.zeros((2, 27, 28, 1), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        s(np.zeros((28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="over 4096"):
        Smoother(photos(80, 1), alpha=0.5, solver="dense")


def test_early_stop_tolerance(photo299):
    z = np.random.default_rng(11).standard_normal(photo299.shape).astype(np.float32)
    exact = Smoother(photo299, alpha=0.95, iterations=400).solve(z).numpy()
    loose = Smoother(photo299, alpha=0.95, iterations=400, tol=1e-2).solve(z).numpy()
    err = np.linalg.norm(loose - exact) / np.linalg.norm(exact)
    assert 1e-5 < err < 5e-2  # stopped early, per column, near the requested relative residual


def test_guarded_numerics_are_the_plain_ops_with_finite_gradients_at_zero():
    """numerics.safe_div / safe_sqrt / safe_norm (used by the graph, CG and the attacks) equal num / den,
    sqrt and the L2 norm wherever those are defined, bitwise; at 0 they give `otherwise` / 0 with a zero
    gradient, where the unguarded ops' gradients are NaN or inf."""
    from smoothadv_tf.numerics import l2_norm, safe_div, safe_norm, safe_sqrt

    rng = np.random.default_rng(0)
    r = tf.constant(rng.standard_normal((3, 4, 5, 2)).astype(np.float32) * [[[[1.0]]], [[[0.0]]], [[[1e-3]]]])
    den = tf.constant([2.5, 0.0, 1e-3], tf.float32)
    num = tf.constant([1.0, 7.0, -3.0], tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([r, den, num])
        ratio, fallback = safe_div(num, den), safe_div(num, den, otherwise=1.0)
        unit = safe_div(r, l2_norm(r)[:, None, None, None])  # a per-image norm broadcast over the image
        masked = safe_div(num, den, active=tf.constant([False, False, True]))
        root, norm = safe_sqrt(den), safe_norm(r)
    plain = (num / den).numpy()
    np.testing.assert_array_equal(ratio.numpy(), [plain[0], 0.0, plain[2]])
    np.testing.assert_array_equal(fallback.numpy(), [plain[0], 1.0, plain[2]])
    np.testing.assert_array_equal(masked.numpy(), [0.0, 0.0, plain[2]])
    np.testing.assert_array_equal(unit.numpy()[[0, 2]], (r / l2_norm(r)[:, None, None, None]).numpy()[[0, 2]])
    assert not unit.numpy()[1].any()
    np.testing.assert_array_equal(root.numpy(), tf.sqrt(den).numpy())
    np.testing.assert_array_equal(norm.numpy(), l2_norm(r).numpy())
    for value, wrt in ((ratio, den), (ratio, num), (unit, r), (root, den), (norm, r)):
        grad = tape.gradient(value, wrt).numpy()
        assert np.isfinite(grad).all() and not grad[1].any()
    with tf.GradientTape() as tape:
        tape.watch(r)
        bare = l2_norm(r)
    assert not np.isfinite(tape.gradient(bare, r).numpy()[1]).all()  # what the guard is for
