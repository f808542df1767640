"""The attack API refuses, before tracing anything, what it would otherwise answer wrongly, and rounds float
images to the 8-bit grid it judges on; on the C4 trained on real Fashion-MNIST and scikit-image photos.

"Before tracing" is checked on the traced-loop cache: a refused call leaves attacks.common._COMPILED as it
was (no new loop, no new trace), and its error is the one-line ValueError, not TensorFlow's "in user code"."""

from __future__ import annotations

import re
import warnings

import keras
import numpy as np
import pytest

from smoothadv_tf import attacks, presets
from smoothadv_tf.attacks import common
from smoothadv_tf.layers import LaplacianSmoothing
from smoothadv_tf.smoothing import Smoother


@pytest.fixture(scope="module")
def batch(fashion_test):
    return fashion_test.images[:8], fashion_test.labels[:8]


def _traces(model) -> dict:
    """What the cache holds for `model`: {configuration: number of traces}."""
    return {k: t.fn.experimental_get_tracing_count() for k, t in common._COMPILED.get(model, {}).items()}


def refused(model, call, message: str) -> ValueError:
    """`call()` raises ValueError containing `message` and traces nothing for `model`."""
    before = _traces(model)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        call()
    assert _traces(model) == before, "a loop was traced or registered before the refusal"
    assert "in user code" not in str(info.value)
    return info.value


# ------------------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize("name", ["fgsm", "pgd2", "carlini_wagner_l2", "smooth_pgd2", "ddn"])
def test_labels_outside_the_models_classes_are_refused(name, c4_model, batch):
    """y = 12 for a 10-class C4 used to give every image "not attacked" and P_suc = nan."""
    x, y = batch
    bad = y.copy()
    bad[3] = 12
    refused(c4_model, lambda: attacks.run_attack(name, c4_model, x, bad), "y: labels must be in [0, 10)")
    bad[3] = -1
    refused(c4_model, lambda: attacks.run_attack(name, c4_model, x, bad), "got -1 at index 3")
    target = (y + 1) % 10
    target[5] = 10
    refused(c4_model, lambda: attacks.run_attack(name, c4_model, x, y, target=target), "target: labels must be in")


def test_targets_equal_to_the_label_are_refused(c4_model, batch):
    """A targeted attack with target == label used to "succeed" at D = 0 on such images (C&W: all of them)."""
    x, y = batch
    target = (y + 1) % 10
    target[[2, 6]] = y[[2, 6]]
    for name in ("carlini_wagner_l2", "pgd2", "smooth_carlini_wagner_l2", "fmn"):
        error = refused(
            c4_model, lambda n=name: attacks.run_attack(n, c4_model, x, y, target=target), "target: equals the label"
        )
        assert "indices [2, 6]" in str(error)


# ------------------------------------------------------------------------------------------------ layout
def test_nchw_images_are_refused_naming_both_layouts(c4_model, batch):
    """(8, 1, 28, 28) for a model taking (28, 28, 1): decided from the declared input shape of a Keras model,
    of a wrapped one (.inner), and by the heuristic for a plain callable."""
    from smoothadv_tf.models import wrap

    x, y = batch
    nchw = np.transpose(x, (0, 3, 1, 2))
    plain = lambda v: c4_model(v)  # noqa: E731 - a callable declaring no input shape
    for model in (c4_model, wrap(c4_model), plain):
        for name in ("fgsm", "smooth_carlini_wagner_l2"):
            error = refused(model, lambda n=name, m=model: attacks.run_attack(n, m, nchw, y), "looks like NCHW")
            assert "NHWC" in str(error) and "(8, 28, 28, 1)" in str(error)
    assert common._declared_image_shape(c4_model) == (28, 28, 1)
    assert common._declared_image_shape(wrap(c4_model)) == (28, 28, 1)
    assert common._declared_image_shape(plain) is None


def test_nhwc_images_of_any_plausible_shape_are_accepted():
    """No false refusals: NHWC photos (3 channels), grey images, and images whose height is 1 or 3 on a model
    that declares it takes them."""
    from conftest import photos

    for shape in ((2, 32, 32, 3), (2, 28, 28, 1), (2, 3, 28, 1), (2, 1, 3, 4)):
        x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
        model = keras.Sequential([keras.Input(shape[1:]), keras.layers.Flatten(), keras.layers.Dense(3)])
        common._check_layout(model, x)  # declared: x fits it
        common._check_layout(lambda v: v, x)  # heuristic: the last axis is short enough to be channels
    common._check_layout(lambda v: v, photos(32, 2))
    # height 3 and 8 channels: NCHW to the heuristic, accepted because the model declares it takes (3, 28, 8);
    # the same images for a callable declaring nothing are refused (the heuristic's known limit)
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 28, 8)).astype(np.float32)
    declared = keras.Sequential([keras.Input((3, 28, 8)), keras.layers.Flatten(), keras.layers.Dense(3)])
    common._check_layout(declared, x)
    with pytest.raises(ValueError, match="looks like NCHW"):
        common._check_layout(lambda v: v, x)


# ------------------------------------------------------------------------------------------------ options
OPTION_CASES = [
    ("smooth_pgd2", {"alpha": 1.0}, "smooth_pgd2: alpha=1.0: must be in [0, 1)"),
    ("smooth_pgd2", {"cg_iterations": 0, "solver": "cg"}, "smooth_pgd2: cg_iterations=0: must be at least 1"),
    ("smooth_pgd2", {"solver": "lu"}, "smooth_pgd2: solver='lu': expected one of"),
    ("smooth_carlini_wagner_l2", {"cg_gradient": "adjoint"}, "cg_gradient='adjoint': expected one of"),
    ("smooth_carlini_wagner_l2", {"alpha": -0.1}, "alpha=-0.1: must be in [0, 1)"),
    ("carlini_wagner_l2", {"iterations": 0}, "carlini_wagner_l2: iterations=0: must be at least 1"),
    ("carlini_wagner_l2", {"binary_search_steps": 2.5}, "binary_search_steps=2.5: expected int"),
    ("carlini_wagner_l2", {"margin": -1.0}, "margin=-1.0: must be >= 0"),
    ("fgsm", {"epsilon": -0.1}, "fgsm: epsilon=-0.1: must be positive"),
    ("ifgsm", {"early_stop": "yes"}, "early_stop='yes': expected bool"),
    ("smooth_ddn", {"direction": "z"}, "direction='z': expected one of"),
    ("fmn", {"min_step": 2.0}, "fmn: min_step=2.0 > max_step=1.0"),
    ("smooth_pgd2_latent", {"graph": {"neighbours": 4}}, "graph={'neighbours': 4}: expected options among"),
    ("smooth_pgd2", {"graph": {"neighbors": 6}}, "neighbors=6: expected 4 or 8"),
]


@pytest.mark.parametrize("name, options, message", OPTION_CASES)
def test_direct_calls_refuse_bad_options_before_tracing(name, options, message, c4_model, batch):
    """Direct calls check their options as the scripts do (smooth_pgd2(alpha=1.0) used to fail at the end of a
    tf.function trace, "in user code")."""
    x, y = batch
    refused(c4_model, lambda: attacks.run_attack(name, c4_model, x, y, **options), message)


def test_numpy_scalars_are_options_too(c4_model, batch):
    """Not refused: NumPy numbers (what a sweep over np.linspace hands over) and whole floats for counts."""
    x, y = batch
    r = attacks.pgd2(c4_model, x, y, epsilon=np.float32(2.0), step=np.float64(1.0), iterations=np.int64(2))
    assert r.iterations.max() <= 2 and r.success.any()
    presets.check_params("ifgsm", {"iterations": 3.0, "early_stop": np.bool_(True), "epsilon": np.float32(0.1)})


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alpha": 1.0}, "alpha=1.0: must be a number in [0, 1)"),
        ({"alpha": "0.9"}, "alpha='0.9': must be a number in [0, 1)"),
        ({"alpha": float("nan")}, "alpha=nan: must be a number in [0, 1)"),
        ({"solver": "lu"}, "solver='lu': expected one of 'auto', 'chebyshev', 'cg', 'dense'"),
        ({"iterations": 0}, "iterations=0: must be a whole number >= 1"),
        ({"iterations": 2.5}, "iterations=2.5: must be a whole number >= 1"),
        ({"gradient": "adjoint"}, "gradient='adjoint': expected"),
        ({"tol": -1.0}, "tol=-1.0: must be a number >= 0"),
    ],
)
def test_smoother_and_layer_refuse_bad_options_up_front(options, message, batch):
    x, _ = batch
    with pytest.raises(ValueError, match=re.escape(message)):
        Smoother(x[:1], **options)
    with pytest.raises(ValueError, match=re.escape(message)):
        LaplacianSmoothing(**options)


# ------------------------------------------------------------------------------------------ probabilities
def test_a_model_ending_in_softmax_is_warned_about_once(c4_model, batch):
    """Probabilities instead of logits: one ProbabilityOutputWarning per model (none for the logits model),
    raised before any tracing; the attack still runs."""
    x, y = batch
    softmax = keras.Sequential([keras.Input((28, 28, 1)), c4_model, keras.layers.Softmax()])
    with warnings.catch_warnings():
        warnings.simplefilter("error", attacks.ProbabilityOutputWarning)  # the warning, raised, stops the call
        with pytest.raises(attacks.ProbabilityOutputWarning, match="Remove the final softmax"):
            attacks.pgd2(softmax, x, y)
        assert softmax not in common._COMPILED  # warned before any loop was traced
    other = keras.Sequential([keras.Input((28, 28, 1)), c4_model, keras.layers.Softmax()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = attacks.pgd2(other, x, y, iterations=2)
        attacks.fgsm(other, x, y)
        attacks.pgd2(c4_model, x, y, iterations=2)
    ours = [w for w in caught if issubclass(w.category, attacks.ProbabilityOutputWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "logits" in str(ours[0].message) and "keras_application" in str(ours[0].message)
    assert first.originally_correct.any() and np.isfinite(first.distortion).all()  # it still ran


# --------------------------------------------------------------------------------------- off the 8-bit grid
def _off_grid(x, seed=0):
    """x with sub-level noise: every pixel off the 8-bit grid but rounding back to the same level."""
    noise = np.random.default_rng(seed).uniform(-0.4 / 255, 0.4 / 255, x.shape).astype(np.float32)
    return np.clip(x + noise, 0.0, 1.0)


def test_off_grid_images_are_rounded_on_entry_and_judged_there(c4_model, fashion_test):
    """Float images (not on the 8-bit grid) used to get their rounding noise counted as distortion: PGD₂ with a
    budget far below one grey level changes nothing, so D must be 0, not ||quantize(x) - x|| (0.018-0.023 here, what it reported)."""
    x8, y = fashion_test.images[:16], fashion_test.labels[:16]
    x = _off_grid(x8)
    rounding = np.sqrt(((np.round(x * 255) / 255 - x) ** 2).sum(axis=(1, 2, 3)))
    assert rounding.min() > 0.01  # what the old code reported as distortion
    r = attacks.pgd2(c4_model, x, y, epsilon=1e-6, step=1e-6, iterations=1)
    assert (r.distortion == 0).all(), r.distortion
    np.testing.assert_array_equal(r.original, x8)  # rounded on entry to the 8-bit image
    assert not r.success.any()
    correct = np.argmax(c4_model(x8).numpy(), -1) == y  # "originally correct" judged on the rounded image
    np.testing.assert_array_equal(r.originally_correct, correct)
    # quantize=False: nothing rounded, the distortion is measured from x itself
    raw = attacks.pgd2(c4_model, x, y, epsilon=1e-6, step=1e-6, iterations=1, quantize=False)
    np.testing.assert_array_equal(raw.original, x)
    assert raw.distortion.max() <= 1e-5  # ε = 1e-6 and float32 rounding of x + r, far below 0.01


def test_resized_photos_measure_no_rounding_noise():
    """Float photos off the 8-bit grid, resized by scikit-image (3 channels, 64 x 64; a small CNN attacked w.r.t. its
    own predictions): a one-step PGD₂ of 1e-6 reports D = 0 where it used to report ||quantize(x) - x||."""
    from conftest import photos

    x = photos(64, 4)
    assert (np.round(x * 255) / 255 != x).mean() > 0.5  # scikit-image's resize leaves the 8-bit grid
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64, 64, 3)), keras.layers.Conv2D(8, 5, strides=2, activation="relu"),
         keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)]
    )  # fmt: skip
    y = np.argmax(model(np.round(x * 255) / 255).numpy(), -1)
    r = attacks.pgd2(model, x, y, epsilon=1e-6, step=1e-6, iterations=1)
    assert r.originally_correct.all()
    assert (r.distortion == 0).all(), r.distortion
    # C&W at c ~ 0 does not move: no iterate meets the margin, x_o is returned (a failure) at D = 0
    cw = attacks.carlini_wagner_l2(model, x, y, iterations=3, initial_const=1e-6)
    assert not cw.success.any() and (cw.distortion == 0).all(), cw.distortion
    np.testing.assert_array_equal(cw.original, np.round(x * 255) / 255)
