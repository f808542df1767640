"""What the toolbox integrations share: the optional import, the model seen on [0, 1] images, the parameters."""

from __future__ import annotations

import importlib
import weakref

import numpy as np

from smoothadv_tf import presets
from smoothadv_tf.errors import MissingExtraError


def require(module: str, extra: str, package: str, needed_by: str | None = None):
    """Import `module` (a toolbox), or raise one ImportError (:class:`~smoothadv_tf.errors.MissingExtraError`,
    which the scripts print as one line) naming the ``pip install`` that provides it; `needed_by` names what
    needs it (default: the integration ``smoothadv_tf.integrations.<extra>``)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{needed_by or f'smoothadv_tf.integrations.{extra}'} needs {package} ({module} does not import: {e}); "
            f"install it with: pip install 'smoothadv_tf[{extra}]'"
        ) from None


def unit_interval_model(model, lower: float = 0.0, upper: float = 1.0, mean=0.0, std=1.0):
    """A callable mapping [0, 1] NHWC images to `model`'s logits, for a model that takes images in
    [lower, upper] (a toolbox's bounds or clip values) standardised as (x - mean) / std (its preprocessing;
    `mean` and `std` broadcast over the channel axis). The library's attacks work on [0, 1] images with L2
    distortion on that scale (eq. 20), so a toolbox's image x is attacked as (x - lower) / (upper - lower).

    Make it once per model: the attacks cache their traced loops per callable, and a new one traces again."""
    import keras
    import tensorflow as tf

    if not (np.isfinite(lower) and np.isfinite(upper) and upper > lower):
        raise ValueError(f"bounds ({lower}, {upper}): expected finite lower < upper")
    std_array = np.asarray(std, np.float32)
    if np.any(std_array <= 0):
        raise ValueError(f"preprocessing std={std}: expected positive values")
    scale, shift = np.float32(upper - lower), np.float32(lower)
    mean_t, std_t = tf.constant(np.asarray(mean, np.float32)), tf.constant(std_array)
    call_model = (lambda x: model(x, training=False)) if isinstance(model, keras.Model) else model

    @tf.autograph.experimental.do_not_convert  # no Python control flow; AutoGraph cannot parse the closure
    def logits(x):
        return call_model((tf.cast(x, tf.float32) * scale + shift - mean_t) / std_t)

    logits.inner = model  # the attacks read a wrapped model's declared input shape from .inner (NCHW check)
    return logits


_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # toolbox wrapper -> (model, key, view)


def cached_view(owner, model, lower: float = 0.0, upper: float = 1.0, mean=0.0, std=1.0):
    """:func:`unit_interval_model` of `model` as toolbox wrapper `owner` (an ART classifier, ...) presents it,
    made once and reused while the model, bounds and preprocessing stay the same (a changed one, e.g. by ART's
    ``set_params``, gets a new view): every attack object on one wrapper then shares the attacks' traced loops.
    With bounds (0, 1) and no preprocessing the view is `model` itself, as in a direct call. Held weakly by
    `owner` (the view refers to `model`, never to `owner`)."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    key = (float(lower), float(upper), mean.shape, mean.tobytes(), std.shape, std.tobytes())
    held = _VIEWS.get(owner)
    if held is not None and held[0] is model and held[1] == key:
        return held[2]
    identity = (float(lower), float(upper)) == (0.0, 1.0) and not mean.any() and bool((std == 1).all())
    view = model if identity else unit_interval_model(model, lower, upper, mean, std)
    _VIEWS[owner] = (model, key, view)
    return view


def attack_unit_images(attack: str, view, x01: np.ndarray, labels, targeted: bool, params: dict) -> np.ndarray:
    """Library attack `attack` on [0, 1] images `x01` seen by `view`, as both toolboxes run it; its images.

    Untargeted, `labels` are the true labels (None: the view's predictions). Targeted, `labels` are the
    targets and the true labels the view's predictions; an image already at its target is not attacked and
    comes back as the image the attack starts from. Predictions are made on that image, x rounded to 8 bits
    unless ``quantize=False`` (what the library attacks and judges: an image whose decision flips when
    rounded is attacked from its rounded prediction)."""
    from smoothadv_tf import attacks

    start = attacks.quantize(x01).numpy() if params.get("quantize", True) else np.array(x01)
    if labels is not None and not targeted:
        return attacks.run_attack(attack, view, x01, labels, **params).adversarial
    predicted = np.argmax(attacks.logits_of(view, start).numpy(), -1)
    if not targeted:
        return attacks.run_attack(attack, view, x01, predicted, **params).adversarial
    todo = predicted != labels
    if todo.any():
        start[todo] = attacks.run_attack(
            attack, view, x01[todo], predicted[todo], target=labels[todo], **params
        ).adversarial
    return start


def attack_parameters(attack: str, preset: str = "mnist", protocol: str = presets.DEFAULT_PROTOCOL, **params) -> dict:
    """The library's parameters of `attack` (one of :data:`smoothadv_tf.presets.ATTACK_NAMES`): the
    ``preset`` ("mnist" or "imagenet", §5.2) under ``protocol`` ("paper" or "strong"), `params` over them,
    checked (:func:`smoothadv_tf.presets.check_params`: one ValueError naming the option)."""
    chosen = presets.preset(preset, attack, protocol, **params)
    presets.check_params(attack, chosen)
    return chosen
