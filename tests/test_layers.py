"""The Keras layers as a user outside the scripts meets them: Keras keywords, config round trip, saving and
loading a model that contains them, and LaplacianSmoothing's per-guide cache (graph of eq. 5, s_α(1) of eq. 9)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import photos

import smoothadv_tf.smoothing as smoothing
from smoothadv_tf.filters import bilateral_filter
from smoothadv_tf.layers import BilateralFilter, LaplacianSmoothing
from smoothadv_tf.smoothing import Smoother

SMOOTHING = {"alpha": 0.9, "iterations": 30, "sigma": 0.05, "mode": "per_channel", "kernel": "gaussian"}
BILATERAL = {"sigma_d": 1.5, "sigma_r": 0.1, "radius": 3, "range_mode": "per_channel"}


@pytest.fixture(scope="module")
def images():
    x = photos(24, 4)  # real photos: guides 0-1 and 2-3
    z = np.random.default_rng(0).standard_normal(x[:2].shape).astype(np.float32)
    return x[:2], x[2:], z


def _apply(layer, x, z):
    return layer([z, x]) if isinstance(layer, LaplacianSmoothing) else layer(x)


def _reference(cls, x, z):
    if cls is LaplacianSmoothing:
        return Smoother(x, **SMOOTHING)(z).numpy()
    return bilateral_filter(x, **BILATERAL).numpy()


@pytest.mark.parametrize("cls, options", [(LaplacianSmoothing, SMOOTHING), (BilateralFilter, BILATERAL)])
def test_keras_keywords_and_config_round_trip(images, cls, options):
    x, _, z = images
    layer = cls(**options, name="defence", trainable=False)
    assert layer.name == "defence" and not layer.trainable
    config = layer.get_config()
    assert {k: config[k] for k in options} == options
    clone = cls.from_config(json.loads(json.dumps(config)))  # what a .keras file stores is JSON
    assert clone.get_config() == config
    np.testing.assert_allclose(_apply(clone, x, z).numpy(), _reference(cls, x, z), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls, options", [(LaplacianSmoothing, SMOOTHING), (BilateralFilter, BILATERAL)])
def test_dtype_keyword(images, cls, options):
    # computed in float32 (the solvers are), returned in the layer's dtype
    x, _, z = images
    out = _apply(cls(**options, dtype="float64"), x.astype(np.float64), z.astype(np.float64))
    assert out.dtype == tf.float64
    np.testing.assert_allclose(out.numpy(), _reference(cls, x, z), atol=1e-5)


def test_saved_model_with_both_layers_loads_and_gives_the_same_outputs(images, tmp_path):
    x, _, z = images
    zin, xin = keras.Input(x.shape[1:], batch_size=2), keras.Input(x.shape[1:], batch_size=2)
    smoothed = LaplacianSmoothing(**SMOOTHING, name="smooth")([zin, xin])
    filtered = BilateralFilter(**BILATERAL, name="bilateral")(xin)
    model = keras.Model([zin, xin], [smoothed, filtered])
    before = [t.numpy() for t in model([z, x])]
    path = str(tmp_path / "layers.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("smooth"), LaplacianSmoothing)
    assert loaded.get_layer("smooth").get_config() == model.get_layer("smooth").get_config()
    assert loaded.get_layer("bilateral").get_config() == model.get_layer("bilateral").get_config()
    after = [t.numpy() for t in loaded([z, x])]
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(after[1], before[1], rtol=1e-6, atol=1e-6)
    # and both are the library's own smoothing / filter, not something the loader rebuilt differently
    np.testing.assert_allclose(after[0], Smoother(x, **SMOOTHING)(z).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after[1], bilateral_filter(x, **BILATERAL).numpy(), atol=1e-6)


@pytest.fixture
def graph_builds(monkeypatch):
    """Counts the set-ups (image graph and s_α(1), a full solve) built for concrete guides, batch by batch."""
    calls = []
    original = smoothing._build_missing

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(smoothing, "_build_missing", counting)
    monkeypatch.setattr(smoothing, "SETUP_CACHE", smoothing.SetupCache())  # no set-up from an earlier test
    return calls


def test_cache_reuses_graph_for_an_equal_guide_and_rebuilds_for_another(images, graph_builds):
    x_a, x_b, z = images
    ref_a, ref_b = Smoother(x_a, alpha=0.95)(z).numpy(), Smoother(x_b, alpha=0.95)(z).numpy()
    graph_builds.clear()
    smoothing.SETUP_CACHE.clear()  # the layer's own cache is under test, not the per-image set-up cache
    layer = LaplacianSmoothing(alpha=0.95)
    np.testing.assert_allclose(layer([z, x_a]).numpy(), ref_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer([z, x_a.copy()]).numpy(), ref_a, rtol=1e-5, atol=1e-6)  # equal values
    np.testing.assert_allclose(layer([z, tf.constant(x_a)]).numpy(), ref_a, rtol=1e-5, atol=1e-6)
    assert len(graph_builds) == 1
    np.testing.assert_allclose(layer([z, x_b]).numpy(), ref_b, rtol=1e-5, atol=1e-6)
    assert len(graph_builds) == 2
    # same shape, one pixel changed: a different guide, so a different graph (not keyed on shape or identity)
    x_c = x_b.copy()
    x_c[1, 10, 10] = 1.0 - x_c[1, 10, 10]
    out_c = layer([z, x_c]).numpy()
    assert len(graph_builds) == 3
    np.testing.assert_allclose(out_c, Smoother(x_c, alpha=0.95)(z).numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(out_c - ref_b).max() > 1e-3


def test_cache_under_tf_function(images, graph_builds):
    x_a, x_b, z = images
    layer = LaplacianSmoothing(alpha=0.95)
    guide = tf.constant(x_a)
    eager = layer([z, guide]).numpy()
    assert len(graph_builds) == 1
    # a function closing over a concrete guide reuses the cached graph: nothing is built while tracing
    closure = tf.function(lambda v: layer([v, guide]))
    np.testing.assert_allclose(closure(z).numpy(), eager, rtol=1e-5, atol=1e-6)
    assert len(graph_builds) == 1
    # a symbolic guide (a function argument) has no value at trace time: built in the graph, cache untouched
    symbolic = tf.function(lambda v, g: layer([v, g]))
    np.testing.assert_allclose(symbolic(z, x_b).numpy(), Smoother(x_b, alpha=0.95)(z).numpy(), rtol=1e-5, atol=1e-6)
    builds = len(graph_builds)
    layer([z, guide])
    assert len(graph_builds) == builds


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="alpha"):
        LaplacianSmoothing(alpha=1.0)
    with pytest.raises(ValueError, match="kernel"):
        LaplacianSmoothing(kernel="box")
    with pytest.raises(ValueError, match="solver"):
        LaplacianSmoothing(solver="lu")
    with pytest.raises(ValueError, match="positive"):
        BilateralFilter(sigma_d=0.0)
    with pytest.raises(ValueError, match="range_mode"):
        BilateralFilter(range_mode="lab")
    with pytest.raises(ValueError, match=r"\[z, x_o\]"):
        LaplacianSmoothing()(np.zeros((1, 4, 4, 1), np.float32))
