"""smoothadv_tf.integrations.foolbox: the library's attacks as foolbox 3 attacks on an fb.TensorFlowModel, on real
Fashion-MNIST and the session's C4. The raw output is the direct call's image for image (exactly); foolbox's
clipping to each ε and its judgement are checked against L2 distances and predictions computed here; bounds
(0, 255) with a mean/std standardisation equal the direct call on the same function seen on [0, 1]; what cannot
be expressed is refused with one ValueError; without foolbox, one ImportError names the pip extra."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from smoothadv_tf import attacks
from smoothadv_tf.integrations import attack_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 20  # images per check: each test runs cheap parameters (10 iterations)
CHEAP = {"iterations": 10}


def readme_snippet() -> str:
    """The README's foolbox snippet, as a user reads it."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    return re.search(r"<!-- foolbox-snippet -->\n```python\n(.*?)```\n<!-- /foolbox-snippet -->", readme, re.S).group(1)


def _fb():
    import foolbox as fb

    return fb


def _l2(a, b) -> np.ndarray:
    return np.sqrt(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).sum(axis=(1, 2, 3)))


def _predict(model, images) -> np.ndarray:
    import tensorflow as tf

    return np.argmax(np.asarray(model(tf.convert_to_tensor(images))), -1)


def _check_clipped(x, raw, clipped, epsilon) -> None:
    """foolbox's clipping of `raw` to the L2 ball of radius `epsilon` around `x` (in the same units), from our
    own distances: x + min(1, ε / ||raw - x||)·(raw - x); within ε."""
    x, raw, clipped = (np.asarray(a, np.float64) for a in (x, raw, clipped))
    factor = np.minimum(1.0, epsilon / np.maximum(_l2(raw, x), 1e-12))
    expected = x + factor[:, None, None, None] * (raw - x)
    scale = max(1.0, float(np.abs(x).max()))
    np.testing.assert_allclose(clipped, expected, rtol=0, atol=2e-6 * scale)
    assert (_l2(clipped, x) <= epsilon * (1 + 1e-5) + 1e-6 * scale).all()


def _data(fashion_test, n=N):
    import tensorflow as tf

    x, y = fashion_test.images[:n], fashion_test.labels[:n].astype(np.int64)
    return x, y, tf.constant(x), tf.constant(y)


@pytest.mark.parametrize("name", ["SmoothCarliniWagnerL2", "CarliniWagnerL2", "SmoothDDN", "DDN"])
def test_minimization_attack_returns_the_direct_call_clipped_and_judged_by_foolbox(name, c4_model, fashion_test):
    """A MinimizationAttack on fb.TensorFlowModel(c4, bounds=(0, 1)): the attack runs once; every ε gets the
    same raw images, equal to the direct call's AttackResult.adversarial; `clipped` is the raw perturbation
    scaled into each ε-ball and `success` the model's judgement of it; at ε = None foolbox's judgement is the
    library's (an image already misclassified counts as a success for foolbox, is not attacked by the library)."""
    fb = _fb()
    from smoothadv_tf.integrations import foolbox as sfb

    x, y, xt, yt = _data(fashion_test)
    attack = getattr(sfb, name)(**CHEAP)
    assert isinstance(attack, fb.attacks.base.MinimizationAttack) and attack.distance is fb.distances.l2
    epsilons = [0.5, 1.5, None]
    raw, clipped, success = attack(fmodel := fb.TensorFlowModel(c4_model, bounds=(0, 1)), xt, yt, epsilons=epsilons)
    direct = attacks.run_attack(attack.attack_name, c4_model, x, y, **attack_parameters(attack.attack_name, **CHEAP))

    assert len(raw) == len(clipped) == len(epsilons) and success.shape == (len(epsilons), N)
    for r in raw:
        np.testing.assert_array_equal(r.numpy(), direct.adversarial)
    assert (~direct.originally_correct).any() and direct.success.sum() >= N // 3  # both kinds of image are here
    distances = fb.distances.l2(xt, raw[0]).numpy()
    np.testing.assert_allclose(distances, direct.distortion, rtol=1e-5, atol=1e-6)
    assert (distances > epsilons[0]).any()  # the first ε really clips
    for k, epsilon in enumerate(epsilons):
        if epsilon is None:
            np.testing.assert_array_equal(clipped[k].numpy(), raw[k].numpy())
        else:
            _check_clipped(x, raw[k].numpy(), clipped[k].numpy(), epsilon)
        np.testing.assert_array_equal(success[k].numpy(), _predict(c4_model, clipped[k]) != y)
    np.testing.assert_array_equal(success[-1].numpy(), direct.success | ~direct.originally_correct)


@pytest.mark.parametrize("name", ["SmoothPGD2", "PGD2"])
def test_fixed_epsilon_attack_runs_once_per_epsilon_in_bounds_units(name, c4_model, fashion_test):
    """A FixedEpsilonAttack: each ε of foolbox's is the library's ε (bounds (0, 1): the same number), its raw
    images the direct call's at that ε; ε = 0 returns the images; foolbox clips (an 8-bit image may lie a
    rounding step past ε) and judges; where the raw image is within ε, foolbox's judgement is the library's."""
    fb = _fb()
    from smoothadv_tf.integrations import foolbox as sfb

    x, y, xt, yt = _data(fashion_test)
    attack = getattr(sfb, name)(**CHEAP)
    assert isinstance(attack, fb.attacks.base.FixedEpsilonAttack)
    epsilons = [0.0, 1.0, 2.5]
    raw, clipped, success = attack(fb.TensorFlowModel(c4_model, bounds=(0, 1)), xt, yt, epsilons=epsilons)
    assert success.shape == (len(epsilons), N)
    np.testing.assert_array_equal(raw[0].numpy(), x)
    np.testing.assert_array_equal(success[0].numpy(), _predict(c4_model, x) != y)
    successes = []
    for k, epsilon in enumerate(epsilons[1:], 1):
        params = attack_parameters(attack.attack_name, **CHEAP, epsilon=epsilon)
        direct = attacks.run_attack(attack.attack_name, c4_model, x, y, **params)
        np.testing.assert_array_equal(raw[k].numpy(), direct.adversarial)
        _check_clipped(x, raw[k].numpy(), clipped[k].numpy(), epsilon)
        judged = success[k].numpy()
        np.testing.assert_array_equal(judged, _predict(c4_model, clipped[k]) != y)
        inside = direct.distortion <= epsilon
        np.testing.assert_array_equal(judged[inside], (direct.success | ~direct.originally_correct)[inside])
        successes.append(direct.success.sum())
    assert successes[0] < successes[1] and successes[1] >= N // 2  # the budget matters, and the attack works


@pytest.mark.parametrize("name", ["SmoothCarliniWagnerL2", "SmoothPGD2"])
def test_targeted_misclassification_is_the_library_target(name, c4_model, fashion_test):
    """fb.criteria.TargetedMisclassification(target_classes): the library's target=, with the model's prediction
    as y; images already predicted as their target are not attacked (returned unchanged, foolbox successes)."""
    fb = _fb()
    import tensorflow as tf

    from smoothadv_tf.integrations import foolbox as sfb

    x, y, xt, _ = _data(fashion_test)
    predicted = _predict(c4_model, x)
    targets = (predicted + 1 + np.arange(N) % 9) % 10
    targets[:3] = predicted[:3]  # already at their target
    todo = targets != predicted
    attack = getattr(sfb, name)(**CHEAP)
    epsilon = None if name == "SmoothCarliniWagnerL2" else 3.0
    criterion = fb.criteria.TargetedMisclassification(tf.constant(targets))
    raw, clipped, success = attack(fb.TensorFlowModel(c4_model, bounds=(0, 1)), xt, criterion, epsilons=[epsilon])

    params = attack_parameters(attack.attack_name, **CHEAP, **({} if epsilon is None else {"epsilon": epsilon}))
    direct = attacks.run_attack(attack.attack_name, c4_model, x[todo], predicted[todo], target=targets[todo], **params)
    np.testing.assert_array_equal(raw[0].numpy()[todo], direct.adversarial)
    np.testing.assert_array_equal(raw[0].numpy()[~todo], x[~todo])
    judged = success[0].numpy()
    np.testing.assert_array_equal(judged, _predict(c4_model, clipped[0]) == targets)
    assert judged[~todo].all()
    inside = direct.distortion <= (np.inf if epsilon is None else epsilon)
    np.testing.assert_array_equal(judged[todo][inside], direct.success[inside])
    assert direct.success.sum() >= 5  # targeted attacks that reach their targets


def test_bounds_and_preprocessing_are_the_direct_call_on_the_same_function_on_unit_images(c4_model, fashion_test):
    """fb.TensorFlowModel(f, bounds=(lower, upper), preprocessing=dict(mean, std, axis=-1)) where f takes
    standardised images: the attacks see g(u) = f((lower + (upper - lower) u - mean) / std) on [0, 1] images (g is
    C4, to float rounding); the raw output is lower + (upper - lower) x the direct call's on g, foolbox's distances
    (upper - lower) x the library's, sPGD₂'s ε foolbox's ε / (upper - lower). sC&W on bounds (0, 255), sPGD₂ on
    (-1, 1). A one-channel mean given with axis=-3 is the same standardisation. The view of a foolbox model is
    built once: a second call traces nothing."""
    fb = _fb()
    import tensorflow as tf

    from smoothadv_tf.integrations import foolbox as sfb

    x, y, _, yt = _data(fashion_test)
    mean, std = np.float32([0.286]), np.float32([0.353])  # Fashion-MNIST's pixel mean and deviation

    def standardised(s):  # a model taking standardised images
        return c4_model(s * std + mean, training=False)

    def wrapped(lower, upper):
        """The foolbox model of `standardised` on images in (lower, upper), its (x - mean) / std standardisation
        as foolbox's preprocessing; the same function on [0, 1] images, written out; the images in the bounds; the map; the preprocessing."""
        scale, shift = np.float32(upper - lower), np.float32(lower)
        bounds_mean, bounds_std = mean * scale + shift, std * scale
        preprocessing = dict(mean=bounds_mean, std=bounds_std, axis=-1)
        fmodel = fb.TensorFlowModel(standardised, bounds=(lower, upper), preprocessing=preprocessing)
        constants = tf.constant(bounds_mean), tf.constant(bounds_std)

        def on_unit_images(u):
            return standardised((tf.cast(u, tf.float32) * scale + shift - constants[0]) / constants[1])

        np.testing.assert_allclose(on_unit_images(x).numpy(), c4_model(x).numpy(), rtol=0, atol=1e-4)
        return fmodel, on_unit_images, tf.constant(x * scale + shift), scale, shift, preprocessing

    fmodel, on_unit_images, x255, scale, shift, _ = wrapped(0, 255)
    scw = sfb.SmoothCarliniWagnerL2(**CHEAP)
    raw, clipped, success = scw(fmodel, x255, yt, epsilons=[255.0, None])
    direct = attacks.smooth_carlini_wagner_l2(on_unit_images, x, y, **attack_parameters(scw.attack_name, **CHEAP))
    np.testing.assert_array_equal(raw[0].numpy(), direct.adversarial * scale + shift)
    np.testing.assert_allclose(fb.distances.l2(x255, raw[0]).numpy(), 255 * direct.distortion, rtol=1e-5, atol=1e-4)
    _check_clipped(x255.numpy(), raw[0].numpy(), clipped[0].numpy(), 255.0)
    np.testing.assert_array_equal(success[1].numpy(), direct.success | ~direct.originally_correct)
    assert direct.success.sum() >= N // 2

    compiled = list(attacks._COMPILED.keys())  # held: a view built again would show as a new key
    again, _, _ = scw(fmodel, x255, yt, epsilons=None)
    np.testing.assert_array_equal(again.numpy(), raw[0].numpy())
    assert set(map(id, attacks._COMPILED.keys())) == set(map(id, compiled))

    fmodel, on_unit_images, x_pm1, scale, shift, preprocessing = wrapped(-1, 1)
    spgd = sfb.SmoothPGD2(**CHEAP)
    raw, clipped, success = spgd(fmodel, x_pm1, yt, epsilons=[2.0 * 2])
    direct = attacks.smooth_pgd2(on_unit_images, x, y, **attack_parameters(spgd.attack_name, **CHEAP, epsilon=2.0))
    np.testing.assert_array_equal(raw[0].numpy(), direct.adversarial * scale + shift)
    np.testing.assert_allclose(fb.distances.l2(x_pm1, raw[0]).numpy(), 2 * direct.distortion, rtol=1e-5, atol=1e-5)
    _check_clipped(x_pm1.numpy(), raw[0].numpy(), clipped[0].numpy(), 2.0 * 2)
    np.testing.assert_array_equal(success[0].numpy(), _predict(fmodel, clipped[0]) != y)
    assert direct.success.sum() >= N // 2

    axis3 = fb.TensorFlowModel(standardised, bounds=(-1, 1), preprocessing={**preprocessing, "axis": -3})
    raw_axis3, _, _ = spgd(axis3, x_pm1, yt, epsilons=[2.0 * 2])
    np.testing.assert_array_equal(raw_axis3[0].numpy(), raw[0].numpy())


def test_what_cannot_be_expressed_is_refused(c4_model, fashion_test):
    """One ValueError naming the problem, before any attack runs: a model that is not an fb.TensorFlowModel, a
    flip_axis, a mean/std along another axis than the channels or of another length, non-4-D images, images
    outside the bounds, a criterion other than (targeted) misclassification, labels of the wrong shape, ε < 0,
    and options that are not the attack's (target=, sPGD₂'s epsilon=, unknown or out-of-range ones); an attack
    name of the other kind, or none, on a base class."""
    fb = _fb()
    import tensorflow as tf

    from smoothadv_tf.integrations import foolbox as sfb

    x, y, xt, yt = _data(fashion_test, 4)
    fmodel = fb.TensorFlowModel(c4_model, bounds=(0, 1))
    scw, spgd = sfb.SmoothCarliniWagnerL2(**CHEAP), sfb.SmoothPGD2(**CHEAP)
    three = np.float32([0.1, 0.2, 0.3])
    refused = [
        (scw, fmodel.transform_bounds((0, 2), wrapper=True), xt, yt, "expected a foolbox TensorFlowModel"),
        (spgd, c4_model, xt, yt, "expected a foolbox TensorFlowModel"),
        (scw, fb.TensorFlowModel(c4_model, (0, 1), preprocessing=dict(flip_axis=-1)), xt, yt, "flip_axis"),
        (
            scw,
            fb.TensorFlowModel(c4_model, (0, 1), preprocessing=dict(mean=three, std=three, axis=-3)),
            xt,
            yt,
            "axis other than the last",
        ),
        (
            spgd,
            fb.TensorFlowModel(c4_model, (0, 1), preprocessing=dict(mean=three, axis=-1)),
            xt,
            yt,
            "3 values",
        ),
        (scw, fmodel, tf.reshape(xt, (4, 28, 28)), yt, r"\(B, H, W, C\)"),
        (
            scw,
            fmodel,
            xt,
            fb.criteria.Misclassification(yt) & fb.criteria.TargetedMisclassification((yt + 1) % 10),
            "criterion",
        ),
        (spgd, fmodel, xt, yt[:3], r"labels of shape \(4,\)"),
    ]
    for attack, model, images, criterion, message in refused:
        with pytest.raises(ValueError, match=message):
            attack(model, images, criterion, epsilons=[1.0])
    with pytest.raises(ValueError, match="inside the model's bounds"):
        scw.run(fmodel, xt * 2, yt)  # foolbox's __call__ asserts this; run() refuses it too
    with pytest.raises(ValueError, match="epsilon=-1.0"):
        spgd(fmodel, xt, yt, epsilons=[-1.0])
    for make, message in [
        (lambda: sfb.SmoothCarliniWagnerL2(target=y), "TargetedMisclassification"),
        (lambda: sfb.SmoothPGD2(epsilon=1.0), "epsilons="),
        (lambda: sfb.SmoothDDN(iterations=0), "iterations=0"),
        (lambda: sfb.SmoothDDN(margin=1.0), "takes no option 'margin'"),
        (lambda: sfb.SmoothCarliniWagnerL2(preset="cifar"), "preset='cifar'"),
        (lambda: type("Wrong", (sfb.SmoothadvMinimizationAttack,), {"attack_name": "smooth_pgd2"}), "smooth_pgd2"),
    ]:
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(TypeError, match="set attack_name"):
        sfb.SmoothadvFixedEpsilonAttack()


def test_labels_of_any_integer_type(c4_model, fashion_test):
    """int32 / uint8 labels and target classes give the int64 run's results (foolbox's own success test would
    fail on them under NumPy 2: eagerpy's np.find_common_type is gone)."""
    fb = _fb()
    import tensorflow as tf

    from smoothadv_tf.integrations import foolbox as sfb

    x, y, xt, yt = _data(fashion_test, 6)
    fmodel, attack = fb.TensorFlowModel(c4_model, bounds=(0, 1)), sfb.DDN(**CHEAP)
    raw64, _, success64 = attack(fmodel, xt, yt, epsilons=[None])
    for dtype in (tf.int32, tf.uint8):
        raw, _, success = attack(fmodel, xt, fb.criteria.Misclassification(tf.cast(yt, dtype)), epsilons=[None])
        np.testing.assert_array_equal(raw[0].numpy(), raw64[0].numpy())
        np.testing.assert_array_equal(success.numpy(), success64.numpy())
    targets = tf.constant((y + 1) % 10, tf.int32)
    _, clipped, success = attack(fmodel, xt, fb.criteria.TargetedMisclassification(targets), epsilons=[None])
    np.testing.assert_array_equal(success[0].numpy(), _predict(c4_model, clipped[0]) == targets.numpy())


def test_readme_snippet_runs_as_written(c4_model, fashion_test):
    """The README's foolbox snippet, run as written on 10 images: its raw images are the direct sC&W call's with
    the parameters it names (the §5.2 MNIST preset, paper protocol), clipped to its ε and judged by foolbox."""
    fb = _fb()

    x, y, xt, yt = _data(fashion_test, 10)
    namespace = {"fmodel": fb.TensorFlowModel(c4_model, bounds=(0, 1)), "images": xt, "labels": yt}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    attack, raw, clipped, success = (namespace[k] for k in ("attack", "raw", "clipped", "success"))
    assert attack.params == attack_parameters("smooth_carlini_wagner_l2", "mnist", "paper")
    direct = attacks.smooth_carlini_wagner_l2(c4_model, x, y, **attack.params)
    assert direct.success.sum() >= 7
    epsilons = [e for e in re.search(r"epsilons=(\[.*?\])", readme_snippet()).group(1)[1:-1].split(", ")]
    assert len(raw) == len(clipped) == len(success) == len(epsilons)
    for k, epsilon in enumerate(epsilons):
        np.testing.assert_array_equal(raw[k].numpy(), direct.adversarial)
        if epsilon != "None":
            _check_clipped(x, raw[k].numpy(), clipped[k].numpy(), float(epsilon))
        np.testing.assert_array_equal(success[k].numpy(), _predict(c4_model, clipped[k]) != y)
    np.testing.assert_array_equal(success[-1].numpy(), direct.success | ~direct.originally_correct)


def test_without_foolbox_one_import_error_names_the_extra():
    """foolbox made unimportable (None in sys.modules, as Python reads a missing module): importing the
    integration raises one ImportError (no chained traceback) naming `pip install 'smoothadv_tf[foolbox]'`,
    before TensorFlow loads; smoothadv_tf and its integrations package still import."""
    code = (
        "import sys\n"
        "sys.modules['foolbox'] = None\n"
        "import smoothadv_tf, smoothadv_tf.integrations\n"
        "try:\n"
        "    import smoothadv_tf.integrations.foolbox\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
        "    print('cause:', e.__cause__, e.__suppress_context__)\n"
        "    print('tensorflow loaded:', 'tensorflow' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert lines[0].startswith("ImportError: smoothadv_tf.integrations.foolbox needs foolbox"), lines[0]
    assert "pip install 'smoothadv_tf[foolbox]'" in lines[0], lines[0]
    assert lines[1:] == ["cause: None True", "tensorflow loaded: False"], lines
