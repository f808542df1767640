"""What makes ŝ_α cheap without changing it: the Chebyshev solve, the per-image set-up cache, solver="auto".

Oracles: scipy's sparse solve (the exact s_α), tf.test.compute_gradient (finite differences, in
test_smoothing.py), and the dense Cholesky solve, itself checked against scipy in test_smoothing.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import tensorflow as tf
from conftest import photos
from test_smoothing import scipy_laplacian

import smoothadv_tf.smoothing as smoothing
from smoothadv_tf import attacks
from smoothadv_tf.smoothing import Smoother, chebyshev_iterations, resolve_solver


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty set-up cache for the test, and a count of the batches whose set-up is built."""
    cache = smoothing.SetupCache()
    monkeypatch.setattr(smoothing, "SETUP_CACHE", cache)
    builds = []
    original = smoothing._build_missing

    def counting(x_o, *args, **kwargs):
        builds.append(int(x_o.shape[0]))
        return original(x_o, *args, **kwargs)

    monkeypatch.setattr(smoothing, "_build_missing", counting)
    # a set-up built inside a traced function (an attack loop that built its own) is recorded in `in_graph`;
    # the cache's own builds run eagerly here (its traced builder replaced by a plain call)
    in_graph = []
    original_build = smoothing._build_setup

    def watching(x_o, *args, **kwargs):
        if tf.inside_function():
            in_graph.append(int(x_o.shape[0] or 0))
        return original_build(x_o, *args, **kwargs)

    monkeypatch.setattr(smoothing, "_build_setup", watching)
    monkeypatch.setattr(smoothing, "_traced_setup", lambda x_o, a, s, i, t, g: watching(x_o, a, s, i, t, dict(g)))
    return cache, builds, in_graph


@pytest.mark.parametrize("alpha, tol", [(0.95, 1e-6), (0.99, 1e-4)])
def test_chebyshev_error_is_within_its_a_priori_bound(alpha, tol):
    """s_α by Chebyshev at chebyshev_iterations(α, tol) steps is within tol (relative, 2-norm) of scipy's
    exact sparse solve on a real photo, every channel; at a third of the steps it is not (the bound is tight
    enough to be the iteration count, not a loose safety margin)."""
    x = photos(48, 1)
    z = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    steps = chebyshev_iterations(alpha, tol)
    lap = scipy_laplacian(Smoother(x, alpha=alpha).graph, 0, alpha)
    exact = [sla.spsolve(lap, z[0, ..., c].ravel().astype(np.float64)) for c in range(3)]

    def worst_error(iterations):
        ours = Smoother(x, alpha=alpha, solver="chebyshev", iterations=iterations).solve(z).numpy()
        return max(np.linalg.norm(ours[0, ..., c].ravel() - e) / np.linalg.norm(e) for c, e in enumerate(exact))

    assert worst_error(steps) <= max(tol, 2e-6)  # float32 floor
    assert worst_error(steps // 3) > 10 * tol
    # a tolerance given to the Chebyshev smoother is met through the same bound: it stops at those steps
    assert Smoother(x, alpha=alpha, solver="chebyshev", iterations=10**4, tol=tol).iterations == steps


def _matrix_of(smoother_for, x_o) -> np.ndarray:
    """The n x n matrix of the map z -> ŝ_α(z) guided by one single-channel image x_o (1, H, W, 1), column j
    being ŝ_α of the j-th basis image (the guide repeated over a batch of n)."""
    n = x_o.shape[1] * x_o.shape[2]
    guides = np.repeat(x_o, n, axis=0)
    basis = np.eye(n, dtype=np.float32).reshape(n, x_o.shape[1], x_o.shape[2], 1)
    return smoother_for(guides)(basis).numpy().reshape(n, n).T


@pytest.mark.parametrize("solver", ["chebyshev", "dense"])
def test_gradient_is_the_transpose_of_the_map_itself(solver):
    """The gradient of <ŝ_α(u), v> is Mᵀv for M the matrix of the forward map, here built column by column
    from the forward alone: for Chebyshev truncated at 5 steps (far from converged, a map of its own) and for
    the dense solve. Also: 5 Chebyshev steps are linear in z (so z = 0 needs no special case), where 5 CG
    steps are not."""
    x = photos(7, 1)[..., :1]
    make = lambda g: Smoother(g, alpha=0.95, solver=solver, iterations=5)  # noqa: E731
    m = _matrix_of(make, x)
    rng = np.random.default_rng(1)
    u, v = (tf.constant(rng.standard_normal(x.shape), tf.float32) for _ in range(2))
    s = make(x)
    with tf.GradientTape() as tape:
        tape.watch(u)
        inner = tf.reduce_sum(s(u) * v)
    np.testing.assert_allclose(tape.gradient(inner, u).numpy().ravel(), m.T @ v.numpy().ravel(), atol=2e-5)
    np.testing.assert_allclose(s(u).numpy().ravel(), m @ u.numpy().ravel(), atol=2e-5)  # the map is M
    zero = tf.zeros_like(u)
    with tf.GradientTape() as tape:
        tape.watch(zero)
        inner = tf.reduce_sum(s(zero) * v)
    np.testing.assert_allclose(tape.gradient(inner, zero).numpy().ravel(), m.T @ v.numpy().ravel(), atol=2e-5)
    if solver == "chebyshev":
        cg = Smoother(x, alpha=0.95, solver="cg", iterations=5)
        gap = np.abs(cg(u + v).numpy() - cg(u).numpy() - cg(v).numpy()).max()
        assert gap > 1e-3, gap  # truncated CG is not linear: the check above has teeth


@pytest.mark.parametrize("solver", ["chebyshev", "dense", "cg"])
@pytest.mark.parametrize("graph", [{"mode": "per_channel"}, {"neighbors": 8}], ids=["per_channel", "8-neighbours"])
def test_every_solver_matches_scipy_on_colour_photos(solver, graph):
    """ŝ_α (eq. 9) and s_α (eq. 8, via solve()) of each solver on 3-channel photos against scipy's sparse
    solve per image and channel: a graph per channel (the dense solve's G = C channel groups, the rows layout's
    per-channel coefficients) and the 8-neighbourhood (the rows layout's diagonal shifts, which cross row ends)."""
    x = photos(16, 2)
    z = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    s = Smoother(x, alpha=0.95, solver=solver, iterations=300 if solver == "cg" else 60, **graph)
    hat, plain = s(z).numpy(), s.solve(z).numpy()
    for i in range(2):
        for c in range(3):
            lap = scipy_laplacian(s.graph, i, 0.95, channel=c)
            rhs = z[i, ..., c].ravel().astype(np.float64)
            exact = sla.spsolve(lap, rhs)
            exact_hat = exact / sla.spsolve(lap, np.ones_like(rhs))
            for ours, ref in ((plain, exact), (hat, exact_hat)):
                err = np.linalg.norm(ours[i, ..., c].ravel() - ref) / np.linalg.norm(ref)
                assert err <= 1e-5, (i, c, err)


def test_a_setup_that_does_not_fit_its_solver_is_refused():
    x = photos(8, 1)
    chebyshev_setup = smoothing.smoothing_setup(x, 0.95, "chebyshev", 10)
    with pytest.raises(ValueError, match="solver='dense' needs the factor"):
        Smoother(x, alpha=0.95, solver="dense", setup=chebyshev_setup)


def test_a_smooth_attack_on_a_padded_batch_matches_the_unpadded_run(c4_model, fashion_test):
    """9 images attacked after a call on 10 run in the loop traced for 10 (padded with a copy of the last image
    and its set-up): each image's result is the one it gets alone in a batch of its own size."""
    x, y = fashion_test.images[:10], fashion_test.labels[:10]
    attacks.clear_compiled_cache()
    attacks.smooth_pgd2(c4_model, x, y, iterations=3, solver="chebyshev")
    padded = attacks.smooth_pgd2(c4_model, x[:9], y[:9], iterations=3, solver="chebyshev")
    attacks.clear_compiled_cache()
    alone = attacks.smooth_pgd2(c4_model, x[:9], y[:9], iterations=3, solver="chebyshev")
    np.testing.assert_allclose(padded.adversarial, alone.adversarial, atol=1e-6)
    np.testing.assert_array_equal(padded.success, alone.success)


def test_auto_picks_dense_below_the_crossover_and_chebyshev_above():
    """The cost model's choice on both sides of its crossover (8 x 8 and 28 x 28 at 100 images and 200 solves,
    the crossover lying between), consistent with its own predictions; above DENSE_MAX_PIXELS it never
    considers dense; and both choices give the exact ŝ_α (AUTO_TOLERANCE) on a real photo."""
    small, large = (100, 8, 8, 3), (100, 28, 28, 1)
    assert resolve_solver(small, 0.95, 200)[0] == "dense"
    assert resolve_solver(large, 0.95, 200)[0] == "chebyshev"
    assert resolve_solver((100, None, None, 3), 0.95, 200)[0] == "chebyshev"  # unknown size: no dense
    assert resolve_solver((1, 65, 65, 1), 0.95, 10**6)[0] == "chebyshev"  # 4225 pixels: no dense
    # the crossover moves with the work: one solve per image cannot pay for a factorisation
    assert resolve_solver((100, 20, 20, 1), 0.95, 1)[0] == "chebyshev"
    for size in (8, 28):
        x = photos(size, 2)
        z = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
        auto = Smoother(x, alpha=0.95, solver="auto", applications=200)
        exact = Smoother(x, alpha=0.95, solver="cg", iterations=400)(z).numpy()
        assert auto.solver == ("dense" if size == 8 else "chebyshev")
        err = np.linalg.norm(auto(z).numpy() - exact) / np.linalg.norm(exact)
        assert err <= 5 * smoothing.AUTO_TOLERANCE, (size, err)


def test_setup_is_built_once_per_image_over_an_epsilon_sweep_and_a_binary_search(c4_model, fashion_test, fresh_cache):
    """sPGD₂ over three ε and sC&W with a 3-step binary search, twice, on the same 8 images: the set-up is
    built once per image and options (one batch), never inside an iteration or again on a later call."""
    cache, builds, in_graph = fresh_cache
    attacks.clear_compiled_cache()  # the loops are traced here, where an in-graph set-up would show
    x, y = fashion_test.images[:8], fashion_test.labels[:8]
    sweep = [attacks.smooth_pgd2(c4_model, x, y, epsilon=eps, iterations=3, solver="chebyshev") for eps in (1, 2, 3)]
    assert builds == [8] and (cache.computed, cache.reused) == (8, 16)
    assert sweep[0].mean_distortion < sweep[2].mean_distortion or sweep[0].p_suc < sweep[2].p_suc  # ε is used
    for _ in range(2):
        attacks.smooth_carlini_wagner_l2(c4_model, x, y, binary_search_steps=3, iterations=5, solver="chebyshev")
    assert builds == [8] and (cache.computed, cache.reused) == (8, 32)  # same solver and iterations: shared
    attacks.smooth_carlini_wagner_l2(c4_model, x, y, binary_search_steps=1, iterations=5, solver="dense")
    assert builds == [8, 8] and cache.computed == 16  # other options: another set-up
    x2 = x.copy()
    x2[3, 5, 5] = 1.0 - x2[3, 5, 5]  # one pixel of one image: that image only is set up again
    attacks.smooth_pgd2(c4_model, x2, y, epsilon=1, iterations=3, solver="chebyshev")
    assert builds == [8, 8, 1] and cache.computed == 17
    assert in_graph == []  # no traced attack loop built a set-up of its own


def test_cached_setup_equals_a_fresh_one_and_the_cache_stays_within_its_bound(monkeypatch):
    """A set-up served from the cache is the one a fresh build gives; the cache holds at most max_bytes,
    dropping the least recently used images first; an image too large for it is simply not kept."""
    x = photos(32, 4)
    fresh = smoothing._build_missing(tf.constant(x), 0.95, "chebyshev", 40, 0.0, {})  # the cache's own builder
    eager = smoothing._build_setup(tf.constant(x), 0.95, "chebyshev", 40, 0.0, {})  # and the in-graph one
    for a, b in zip(fresh, eager):
        if b is not None:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    per_image = sum(t[0].numpy().nbytes for t in fresh if t is not None)
    cache = smoothing.SetupCache(max_bytes=int(2.5 * per_image))
    monkeypatch.setattr(smoothing, "SETUP_CACHE", cache)
    first = smoothing.smoothing_setup(x, 0.95, "chebyshev", 40)
    assert cache.computed == 4 and len(cache) == 2 and cache.bytes <= cache.max_bytes
    for a, b in zip(first, fresh):
        if b is not None:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    smoothing.smoothing_setup(x[3:], 0.95, "chebyshev", 40)  # the most recent image: still there
    assert (cache.computed, cache.reused) == (4, 1)
    smoothing.smoothing_setup(x[:1], 0.95, "chebyshev", 40)  # the oldest: evicted, built again
    assert (cache.computed, cache.reused) == (5, 1) and cache.bytes <= cache.max_bytes
    tiny = smoothing.SetupCache(max_bytes=per_image // 2)
    monkeypatch.setattr(smoothing, "SETUP_CACHE", tiny)
    again = smoothing.smoothing_setup(x[:2], 0.95, "chebyshev", 40)
    assert len(tiny) == 0 and tiny.bytes == 0
    np.testing.assert_array_equal(again.normaliser.numpy(), fresh.normaliser.numpy()[:2])
    # entries own their memory: a view would keep its whole batch alive beyond the bytes counted
    assert all(a.base is None for entry in cache._entries.values() for a in entry)


@pytest.mark.parametrize("attack", ["smooth_pgd2", "smooth_carlini_wagner_l2", "smooth_ddn"])
def test_auto_gives_the_dense_results_on_real_images(c4_model, fashion_test, attack):
    """The presets' solver="auto" (Chebyshev at 28 x 28) against the exact dense solve, 40 real images, the
    MNIST preset (paper protocol): the same successes and D̄ equal to 1e-3 relative."""
    x, y = fashion_test.images[:40], fashion_test.labels[:40]
    params = attacks.preset("mnist", attack)
    if attack == "smooth_ddn":
        params["iterations"] = 30
    auto = getattr(attacks, attack)(c4_model, x, y, **params)
    dense = getattr(attacks, attack)(c4_model, x, y, **{**params, "solver": "dense"})
    assert params["solver"] == "auto" and auto.success.sum() > 0
    np.testing.assert_array_equal(auto.success, dense.success)
    assert abs(auto.mean_distortion - dense.mean_distortion) <= 1e-3 * dense.mean_distortion
