"""smoothadv_tf.integrations.art: the library's attacks as IBM ART EvasionAttacks on an ART TensorFlowV2Classifier
wrapping the session's C4, on real Fashion-MNIST. generate() must give the direct library call's images, bit for
bit: on [0, 1], in other clip values with mean/std preprocessing, for every label form, targeted, in batches."""

from __future__ import annotations

import importlib
import os
import re
import sys

import numpy as np
import pytest

from smoothadv_tf import attacks

N = 20
CHEAP = {"iterations": 10}  # every attack's loop count; C&W / sC&W: one binary-search step (paper protocol)
# the README's snippet (between <!-- art-snippet --> and <!-- /art-snippet -->), given `classifier` and `x_test`
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_snippet() -> str:
    """The README's ART snippet, as a user reads it."""
    text = open(README, encoding="utf-8").read()
    return re.search(r"<!-- art-snippet -->\n```python\n(.*?)```\n<!-- /art-snippet -->", text, re.S).group(1)


def classifier(model, input_shape=(28, 28, 1), **options):
    """`model` wrapped as an ART user wraps a Keras classifier (clip values (0, 1) unless given)."""
    import keras
    from art.estimators.classification import TensorFlowV2Classifier

    options.setdefault("clip_values", (0, 1))
    return TensorFlowV2Classifier(
        model,
        nb_classes=10,
        input_shape=input_shape,
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **options,
    )


def two_class_classifier(model):
    import keras
    from art.estimators.classification import TensorFlowV2Classifier

    return TensorFlowV2Classifier(
        model,
        nb_classes=2,
        input_shape=(28, 28, 1),
        clip_values=(0, 1),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


@pytest.fixture(scope="module")
def art_module():
    return importlib.import_module("smoothadv_tf.integrations.art")


@pytest.fixture(scope="module")
def images(fashion_test):
    return fashion_test.images[:N], fashion_test.labels[:N].astype(np.int64)


def direct(name, model, x, y, **params):
    """The library call the ART attack must reproduce: the MNIST preset (paper protocol) with `params` over it."""
    return attacks.run_attack(name, model, x, y, **attacks.preset("mnist", name, **CHEAP), **params)


def predictions(model, x) -> np.ndarray:
    return np.argmax(np.asarray(model(x, training=False)), -1)


@pytest.mark.parametrize(
    "cls, name",
    [
        ("SmoothCarliniWagnerL2", "smooth_carlini_wagner_l2"),
        ("SmoothPGD2", "smooth_pgd2"),
        ("SmoothDDN", "smooth_ddn"),
        ("DDN", "ddn"),
        ("CarliniWagnerL2", "carlini_wagner_l2"),
    ],
)
def test_generate_equals_the_direct_call(cls, name, art_module, c4_model, images):
    """On C4 wrapped in ART with clip values (0, 1), generate(x, y) is the direct call's adversarial image for
    every image, as float32; the attack did attack (most images changed, some now misclassified)."""
    x, y = images
    attack = getattr(art_module, cls)(classifier(c4_model), verbose=False, **CHEAP)
    assert attack.attack_name == name
    x_adv = attack.generate(x, y)
    expected = direct(name, c4_model, x, y).adversarial
    assert x_adv.dtype == np.float32 and x_adv.shape == x.shape
    np.testing.assert_array_equal(x_adv, expected)
    changed = np.abs(x_adv - x).max(axis=(1, 2, 3)) > 0
    fooled = predictions(c4_model, x_adv) != y
    assert changed.sum() >= N // 2 and fooled.sum() >= N // 2, (changed.sum(), fooled.sum())


def test_clip_values_and_preprocessing_are_applied_inside_the_model(art_module, c4_model, images):
    """A classifier on [0, 255] images standardised as (x - mean) / std (one mean and std per channel) before a
    model taking standardised input: generate(255 x) equals 255 x the direct call on the equivalent [0, 1] model
    (x ↦ model((255 x - mean) / std)); its parameters stay on [0, 1] (ε = 5 there, eq. 20)."""
    import tensorflow as tf

    x, y = images
    mean, std = np.array([33.0], np.float32), np.array([80.0], np.float32)

    def standardised(z, training=False):  # takes (x - mean) / std of a [0, 255] image
        return c4_model((z * std + mean) / 255.0, training=training)

    def unit(x01):  # the same model on [0, 1] images
        return standardised((tf.cast(x01, tf.float32) * 255.0 - mean) / std)

    wrapped = classifier(standardised, clip_values=(0, 255), preprocessing=(mean, std))
    for cls, name in (("SmoothCarliniWagnerL2", "smooth_carlini_wagner_l2"), ("SmoothPGD2", "smooth_pgd2")):
        x_adv = getattr(art_module, cls)(wrapped, verbose=False, **CHEAP).generate(x * np.float32(255), y)
        expected = direct(name, unit, x, y)
        np.testing.assert_array_equal(x_adv, expected.adversarial * np.float32(255))
        assert x_adv.min() >= 0 and x_adv.max() <= 255 and expected.success.sum() >= N // 2
        if name == "smooth_pgd2":  # the L2 budget is on [0, 1], not on [0, 255]
            assert (
                expected.distortion.max() <= 5.0 + 1e-4 and np.sqrt(((x_adv - 255 * x) ** 2).sum((1, 2, 3))).max() > 5
            )


def test_label_forms(art_module, c4_model, images):
    """One-hot, index (N,) and (N, 1) labels give the same images as the direct call with those labels; no
    labels: the classifier's predictions (ART's convention), which differ from the true labels here."""
    x, y = images
    attack = art_module.SmoothPGD2(classifier(c4_model), verbose=False, **CHEAP)
    expected = direct("smooth_pgd2", c4_model, x, y).adversarial
    for labels in (y, y[:, None], np.eye(10, dtype=np.float32)[y]):
        np.testing.assert_array_equal(attack.generate(x, labels), expected)
    predicted = predictions(c4_model, x)
    assert (predicted != y).any()  # else "no labels" could not be told from the true ones
    np.testing.assert_array_equal(attack.generate(x), direct("smooth_pgd2", c4_model, x, predicted).adversarial)
    with pytest.raises(ValueError, match=r"y: index labels must be in \[0, 10\)"):
        attack.generate(x, np.full(N, 10))
    with pytest.raises(ValueError, match="y: 19 labels for 20 images"):
        attack.generate(x, y[:-1])


def test_targeted(art_module, c4_model, images):
    """targeted=True: y are the targets, the true labels the classifier's predictions; an image already at its
    target comes back unchanged (8-bit); the others are the direct targeted call's. No targets: ART's error."""
    x, y = images
    predicted = predictions(c4_model, x)
    target = (predicted + 1) % 10
    target[:3] = predicted[:3]  # already there
    attack = art_module.SmoothPGD2(classifier(c4_model), targeted=True, verbose=False, **CHEAP)
    x_adv = attack.generate(x, np.eye(10)[target])
    np.testing.assert_array_equal(x_adv[:3], np.round(x[:3] * 255) / 255)
    expected = direct("smooth_pgd2", c4_model, x[3:], predicted[3:], target=target[3:])
    np.testing.assert_array_equal(x_adv[3:], expected.adversarial)
    assert (predictions(c4_model, x_adv[3:]) == target[3:]).sum() >= (N - 3) // 2
    with pytest.raises(ValueError, match="Target labels `y` need to be provided"):
        attack.generate(x)


def test_the_classifier_is_read_at_every_generate_and_its_view_shared(art_module, c4_model, images):
    """A change made to the classifier after the attack was built (ART's set_params: other clip values) is what
    the next generate uses; two attack objects on one classifier share its [0, 1] view (and so the traced
    loops), which with clip values (0, 1) and no preprocessing is the Keras model itself."""
    x, y = images
    wrapped = classifier(c4_model)
    first, second = (art_module.DDN(wrapped, verbose=False, **CHEAP) for _ in range(2))
    assert first._view()[2] is second._view()[2] is c4_model
    np.testing.assert_array_equal(first.generate(x, y), direct("ddn", c4_model, x, y).adversarial)
    wrapped.set_params(clip_values=(0, 255))  # the model now takes pixels in [0, 255]: C4 sees 255 x
    assert first._view()[2] is second._view()[2] is not c4_model
    expected = direct("ddn", lambda v: c4_model(v * 255.0, training=False), x, y).adversarial * 255
    np.testing.assert_array_equal(second.generate(x * 255, y), expected)


def test_labels_from_the_classifier_are_its_predictions_on_the_image_the_attack_starts_from(art_module):
    """y=None: the true label is the classifier's prediction on x rounded to 8 bits, the image the library
    attacks and judges. A crafted model whose decision flips when its first pixel is rounded (0.4/255 above
    the level k/255 on the raw image: class 0; on the rounded one: class 1): labels predicted on the raw image
    would call the image misclassified and leave it unattacked; here it is attacked and leaves class 1."""
    import keras

    k = 100
    flips = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Lambda(lambda v: v[:, 0, 0, :]),
            keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant([[1e4, -1e4]])),
        ]
    )
    flips.layers[-1].bias.assign([-1e4 * (k + 0.2) / 255, 1e4 * (k + 0.2) / 255])
    x = np.zeros((1, 28, 28, 1), np.float32)
    x[0, 0, 0, 0] = (k + 0.4) / 255
    assert predictions(flips, x)[0] == 0 and predictions(flips, np.round(x * 255) / 255)[0] == 1
    wrapped = two_class_classifier(flips)
    x_adv = art_module.DDN(wrapped, verbose=False, **CHEAP).generate(x)
    assert predictions(flips, x_adv)[0] == 0


def test_batches_and_progress_bar(art_module, c4_model, images, capsys):
    """batch_size=8 (batches of 8, 8, 4) gives the images of one batch of 20, the direct call's; the progress
    bar (tqdm, on stderr) names the attack and counts the batches, and is silent without verbose."""
    x, y = images
    wrapped = classifier(c4_model)
    split = art_module.SmoothCarliniWagnerL2(wrapped, batch_size=8, **CHEAP).generate(x, y)
    err = capsys.readouterr().err
    assert "sC&W" in err and "3/3" in err, err
    whole = art_module.SmoothCarliniWagnerL2(wrapped, verbose=False, **CHEAP).generate(x, y)
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(split, whole)
    np.testing.assert_array_equal(split, direct("smooth_carlini_wagner_l2", c4_model, x, y).adversarial)


def test_parameters(art_module, c4_model):
    """The library's parameters over preset and protocol, checked at once; ART's set_params re-derives them."""
    wrapped = classifier(c4_model)
    attack = art_module.SmoothCarliniWagnerL2(wrapped, protocol="strong", alpha=0.9, verbose=False)
    assert attack.params == attacks.preset("mnist", "smooth_carlini_wagner_l2", "strong", alpha=0.9)
    attack.set_params(protocol="paper", iterations=7)
    assert attack.params == attacks.preset("mnist", "smooth_carlini_wagner_l2", "paper", alpha=0.9, iterations=7)
    assert attack.iterations == 7 and "iterations=7" in repr(attack)
    with pytest.raises(ValueError, match="alpha=1.5: must be in"):
        attack.set_params(protocol="strong", alpha=1.5)
    assert attack.protocol == "paper" and attack.params["alpha"] == 0.9  # a refused change changes nothing
    with pytest.raises(ValueError, match='"epsilon" cannot be set'):
        attack.set_params(epsilon=1.0)
    with pytest.raises(ValueError, match="epsilon=-1.0: must be positive"):
        art_module.SmoothPGD2(wrapped, epsilon=-1.0)
    with pytest.raises(ValueError, match="takes no option 'epsilon'"):
        art_module.SmoothDDN(wrapped, epsilon=1.0)
    with pytest.raises(ValueError, match="target labels are generate's y"):
        art_module.DDN(wrapped, target=np.zeros(3, int))
    with pytest.raises(ValueError, match="preset='cifar'"):
        art_module.DDN(wrapped, preset="cifar")
    with pytest.raises(ValueError, match="batch_size=0"):
        art_module.DDN(wrapped, batch_size=0)


def test_refusals(art_module, c4_model):
    """What the attacks cannot run on: each one ValueError naming the problem, at construction."""
    from art.defences.preprocessor import FeatureSqueezing

    cases = [
        (dict(input_shape=(1, 28, 28), channels_first=True), "channels_first=True"),
        (dict(input_shape=(784,)), r"input_shape=\(784,\).*3-D"),
        (dict(clip_values=None), "no clip_values"),
        (dict(clip_values=(np.zeros((28, 28, 1)), np.linspace(0.5, 1, 784).reshape(28, 28, 1))), "vary per feature"),
        (dict(preprocessing_defences=FeatureSqueezing(clip_values=(0, 1))), "preprocessing_defences"),
        (dict(preprocessing=FeatureSqueezing(clip_values=(0, 1))), "preprocessing FeatureSqueezing"),
        (dict(preprocessing=(np.zeros(28, np.float32), np.ones(28, np.float32))), r"mean/std of shape \(28,\)"),
        (dict(preprocessing=(np.zeros(1, np.float32), np.float32(1))), r"preprocessing mean of shape \(1,\) and std"),
    ]
    for options, message in cases:
        shape = options.pop("input_shape", (28, 28, 1))
        with pytest.raises(ValueError, match=message):
            art_module.SmoothCarliniWagnerL2(classifier(c4_model, input_shape=shape, **options))
    attack = art_module.SmoothPGD2(classifier(c4_model), verbose=False)
    x = np.zeros((2, 28, 28, 1), np.float32)
    with pytest.raises(ValueError, match="clip_values"):
        attack.generate(x + 2.0)
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28, 1\)"):
        attack.generate(x.reshape(2, 784))
    with pytest.raises(ValueError, match="takes no options"):
        attack.generate(x, mask=np.ones_like(x))


def test_import_without_art_names_the_extra(monkeypatch):
    """With ART absent (every art module made unimportable), importing the integration raises one ImportError
    naming the pip extra; the integrations package itself still imports."""
    for name in [m for m in sys.modules if m == "art" or m.startswith("art.")] or ["art"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "smoothadv_tf.integrations.art", raising=False)
    importlib.import_module("smoothadv_tf.integrations")
    with pytest.raises(ImportError, match=re.escape("pip install 'smoothadv_tf[art]'")):
        importlib.import_module("smoothadv_tf.integrations.art")


def test_readme_snippet(c4_model, fashion_test):
    """The README's three lines, run as written on an ART classifier of C4 and 10 test images: the direct sC&W
    call (MNIST preset, paper protocol) on the classifier's predicted labels, image for image."""
    x = fashion_test.images[N : N + 10]
    namespace = {"classifier": classifier(c4_model), "x_test": x}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    expected = attacks.smooth_carlini_wagner_l2(
        c4_model, x, predictions(c4_model, x), **attacks.preset("mnist", "smooth_carlini_wagner_l2")
    )
    np.testing.assert_array_equal(namespace["x_adv"], expected.adversarial)
    assert expected.success.sum() >= 5
