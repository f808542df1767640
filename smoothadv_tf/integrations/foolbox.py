"""The library's smooth attacks (and their plain twins) as foolbox 3 attacks.

    from smoothadv_tf.integrations.foolbox import SmoothCarliniWagnerL2
    raw, clipped, success = SmoothCarliniWagnerL2()(fmodel, images, labels, epsilons=[0.5, 1.0, None])

Each class runs one attack of :mod:`smoothadv_tf.attacks` on a foolbox ``fb.TensorFlowModel``:

- :class:`SmoothCarliniWagnerL2`: sC&W, eq. (18): min_z λ‖ŝ_α(z)‖² + ℓ(f(c(x_o + ŝ_α(z))), t), r = ŝ_α(z)
  (eq. 17), a ``MinimizationAttack``; :class:`CarliniWagnerL2` its plain twin (eq. 4);
- :class:`SmoothDDN`: DDN on the latent z with r = ŝ_α(z) (beyond the paper), a ``MinimizationAttack``;
  :class:`DDN` its plain twin;
- :class:`SmoothPGD2`: sPGD₂, eq. (12): x ← c(x - n(ŝ_α(g))), PGD₂ with its gradient g smoothed, a
  ``FixedEpsilonAttack``; :class:`PGD2` its plain twin (eq. 11).

ŝ_α is the normalised smoothing of eq. (9), ŝ_α(z) = diag(s_α(1))⁻¹ s_α(z), guided by the image attacked.
Each class is one line: the attack's name (``attack_name``) on one generic base per kind
(:class:`SmoothadvMinimizationAttack`, :class:`SmoothadvFixedEpsilonAttack`); a user may do the same for
another attack of the library of the same kind (e.g. ``attack_name = "smooth_fmn"``).

**The model.** The ``fb.TensorFlowModel``'s own callable (a Keras model or any callable) is attacked through
:func:`~smoothadv_tf.integrations.unit_interval_model`: an image x in its ``bounds`` (lower, upper) is attacked
as (x - lower) / (upper - lower), its ``preprocessing`` (mean, std) applied inside, and the result mapped
back. So the raw output is, image for image, the direct call's ``AttackResult.adversarial`` (8-bit quantised on
[0, 1] by default) times (upper - lower) plus lower. The view is built once per foolbox model (the library
caches its traced loops per callable; with bounds (0, 1) and no preprocessing the wrapped model itself is
attacked, sharing the direct calls' traces). Refused with one ValueError: a model that is not an
``fb.TensorFlowModel`` (e.g. a ``transform_bounds(..., wrapper=True)`` wrapper: use the default
``transform_bounds``, which keeps a ``TensorFlowModel``), a ``flip_axis`` in the preprocessing, a mean or std
that varies along another axis than the last one (the channels: the attacks take NHWC images; foolbox's
``axis=-3`` is for channels-first images) or whose length is not the images' channel count, and inputs that
are not 4-D (B, H, W, C) images.

**Units.** foolbox's ``epsilons`` and the L2 distances it measures (``fb.distances.l2``) are in the model's
bounds units: a distance on [0, 1] pixels (the library's, eq. 20) times (upper - lower). sPGD₂'s budget ε is
taken from ``epsilons`` in those units and passed to the library as ε / (upper - lower); an ε of 0 returns the
images unchanged. The library's own keyword options (``step``, ``init_epsilon``, ``learning_rate``, ...) are
the direct call's, on the [0, 1] scale of the paper whatever the bounds, so the same keywords give the same
attack here, in :mod:`smoothadv_tf.integrations.art` and in :mod:`smoothadv_tf.attacks` (multiply sPGD₂'s
``step`` or sDDN's ``init_epsilon`` by (upper - lower) to read it in bounds units).

**Criteria.** ``fb.criteria.Misclassification(labels)`` (or a plain labels tensor, as foolbox takes it): the
library's untargeted attack with y = labels; an image the model already misclassifies is not attacked and comes
back as the library returns it (8-bit quantised), which foolbox then counts as a success at its distance.
``fb.criteria.TargetedMisclassification(target_classes)``: the library's ``target=``; it carries no true
labels, so the library's y is the model's prediction on the image the attack starts from (the 8-bit rounded
one when quantising), and an image already predicted as its target is not attacked (it comes back as the
library returns unattacked images). Other criteria are refused.

**What foolbox adds.** A ``MinimizationAttack`` runs once whatever the ``epsilons`` (the library's attacks
minimise on their own schedule, so foolbox's ``early_stop`` is not used); a ``FixedEpsilonAttack`` runs once per
ε. foolbox then clips each raw image's perturbation to each ε (``clipped``) and judges it with the criterion
(``success``). The library judges 8-bit images: a quantised result may lie a rounding step beyond ε, and its
clipped version is then no longer 8-bit (``quantize=False`` keeps every iterate unquantised).

Importing this module without foolbox raises one ImportError naming ``pip install 'smoothadv_tf[foolbox]'``.
"""

from __future__ import annotations

import numpy as np

from smoothadv_tf import presets
from smoothadv_tf.integrations.common import attack_parameters, attack_unit_images, cached_view, require

# the one ImportError naming the extra, before any foolbox name (and before TensorFlow loads)
fb = require("foolbox", "foolbox", "foolbox 3")
ep = require("eagerpy", "foolbox", "eagerpy (foolbox 3's tensor layer)")

__all__ = [
    "FIXED_EPSILON_ATTACKS",
    "MINIMIZATION_ATTACKS",
    "SmoothadvMinimizationAttack",
    "SmoothadvFixedEpsilonAttack",
    "SmoothCarliniWagnerL2",
    "CarliniWagnerL2",
    "SmoothDDN",
    "DDN",
    "SmoothPGD2",
    "PGD2",
]

FIXED_EPSILON_ATTACKS = presets.L2_BUDGET_ATTACKS
"""The library's L2 attacks with a budget ε: what a :class:`SmoothadvFixedEpsilonAttack` may run."""
MINIMIZATION_ATTACKS = ("carlini_wagner_l2", "smooth_carlini_wagner_l2", "ddn", "smooth_ddn", "fmn", "smooth_fmn")
"""The library's L2 attacks without a budget: what a :class:`SmoothadvMinimizationAttack` may run."""


# ----------------------------------------------------------------------------------- the model, on [0, 1]
class _ModelView:
    """A foolbox model as the library sees it: `logits` maps [0, 1] NHWC images to its logits; `lower`,
    `scale` map them back to its bounds; `mean_size` is the channel count the preprocessing implies (1: any)."""

    def __init__(self, logits, lower: np.float32, upper: np.float32, mean_size: int):
        self.logits = logits
        self.lower = lower
        self.upper = upper
        self.scale = np.float32(upper - lower)
        self.mean_size = mean_size


def _per_channel(name: str, value) -> np.ndarray | None:
    """The preprocessing `value` (an eagerpy tensor or None) as a 1-D float32 array over the channels."""
    if value is None:
        return None
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value, np.float32)
    if array.ndim > 4 or any(d != 1 for d in array.shape[:-1]):
        raise ValueError(
            f"foolbox model: preprocessing {name} of shape {array.shape} varies along an axis other than the "
            "last one; the attacks take NHWC images, so the mean and std must be per channel on the last axis "
            "(preprocessing=dict(mean=..., std=..., axis=-1); axis=-3 is for channels-first images)"
        )
    return array.reshape(-1)


def _model_view(model) -> _ModelView:
    """The :class:`_ModelView` of foolbox model `model`, built once per model (and again only if its model,
    bounds or preprocessing changed, e.g. by ``transform_bounds(..., inplace=True)``)."""
    if not isinstance(model, fb.TensorFlowModel):
        raise ValueError(
            f"model: expected a foolbox TensorFlowModel (fb.TensorFlowModel(keras_model, bounds=..., "
            f"preprocessing=...)), got {type(model).__module__}.{type(model).__name__}"
        )
    inner = model._model
    lower, upper = (float(b) for b in model.bounds)
    mean, std, flip_axis = model._preprocess_args
    if flip_axis is not None:
        raise ValueError(
            f"foolbox model: preprocessing flip_axis={flip_axis} is not supported (the attacks see the model "
            "through a mean/std standardisation only); flip the channels inside the model instead"
        )
    mean, std = _per_channel("mean", mean), _per_channel("std", std)
    sizes = {len(a) for a in (mean, std) if a is not None and len(a) > 1}
    if len(sizes) > 1:
        raise ValueError(f"foolbox model: preprocessing mean and std have different lengths {sorted(sizes)}")
    mean = np.float32(0.0) if mean is None else (mean if len(mean) > 1 else mean[0])
    std = np.float32(1.0) if std is None else (std if len(std) > 1 else std[0])
    # one view per fb model and setting (the model itself for bounds (0, 1) without preprocessing: the direct
    # call's traced loops), rebuilt only when they change, e.g. by transform_bounds(..., inplace=True)
    logits = cached_view(model, inner, lower, upper, mean, std)
    return _ModelView(logits, np.float32(lower), np.float32(upper), sizes.pop() if sizes else 1)


def _int64_labels(criterion):
    """`criterion` with its labels (or target classes) as int64: foolbox's own success test compares them with
    its int64 predictions, and for other integer types eagerpy 0.30 calls ``np.find_common_type``, which NumPy 2
    removed (an AttributeError after the whole attack has run; foolbox's own attacks fail alike)."""
    import tensorflow as tf

    criterion = fb.attacks.base.get_criterion(criterion)
    for kind, field in (
        (fb.criteria.Misclassification, "labels"),
        (fb.criteria.TargetedMisclassification, "target_classes"),
    ):
        if isinstance(criterion, kind):
            raw = getattr(criterion, field).raw
            dtype = tf.as_dtype(raw.dtype)
            if dtype.is_integer and dtype != tf.int64:
                return kind(tf.cast(tf.convert_to_tensor(raw), tf.int64))
    return criterion


def _goal(criterion, n: int) -> tuple[np.ndarray, bool]:
    """(classes, targeted) of a foolbox criterion (or labels) for a batch of `n` images."""
    criterion = fb.attacks.base.get_criterion(criterion)
    if isinstance(criterion, fb.criteria.Misclassification):
        classes, targeted, name = criterion.labels, False, "labels"
    elif isinstance(criterion, fb.criteria.TargetedMisclassification):
        classes, targeted, name = criterion.target_classes, True, "target_classes"
    else:
        raise ValueError(
            f"criterion {criterion!r}: expected fb.criteria.Misclassification(labels) (or the labels "
            "themselves) or fb.criteria.TargetedMisclassification(target_classes)"
        )
    classes = np.asarray(classes.numpy())
    if classes.shape != (n,) or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"criterion: expected {name} of shape ({n},), integers; got {classes.shape} ({classes.dtype})")
    return classes.astype(np.int64), targeted


# ----------------------------------------------------------------------------------------- the attacks
class _SmoothadvAttack:
    """What both kinds share: the parameters, and one run of the library's attack on a foolbox batch."""

    attack_name: str | None = None
    _KIND: tuple = ()
    _NOT_OPTIONS: dict = {"target": "the target labels come from the criterion: fb.criteria.TargetedMisclassification"}
    distance = fb.distances.l2

    def __init_subclass__(cls, **kwargs):
        """Check a subclass's ``attack_name``: an attack of the library of its base's kind."""
        super().__init_subclass__(**kwargs)
        if cls.attack_name is not None and cls.attack_name not in cls._KIND:
            raise ValueError(f"{cls.__name__}.attack_name={cls.attack_name!r}: expected one of {cls._KIND}")

    def __init__(self, *, preset: str = "mnist", protocol: str = presets.DEFAULT_PROTOCOL, **params) -> None:
        if self.attack_name is None:
            raise TypeError(f"{type(self).__name__}: set attack_name (or use SmoothCarliniWagnerL2, SmoothPGD2, ...)")
        for key, why in self._NOT_OPTIONS.items():
            if key in params:
                raise ValueError(f"{type(self).__name__}: {key}= is not an option: {why}")
        self.preset = preset
        self.protocol = protocol
        self.options = dict(params)
        self.params = attack_parameters(self.attack_name, preset, protocol, **params)  # checked now

    def __call__(self, model, inputs, criterion, *, epsilons, **kwargs):
        """foolbox's ``__call__`` (``attack(fmodel, images, criterion, epsilons=[...])`` returns ``(raw,
        clipped, success)``), with the model checked first: anything but an ``fb.TensorFlowModel`` the attack
        can see on [0, 1] is one ValueError, before foolbox touches it."""
        _model_view(model)
        return super().__call__(model, inputs, _int64_labels(criterion), epsilons=epsilons, **kwargs)

    def _attack(self, model, inputs, criterion, epsilon: float | None):
        """The library's attack on foolbox images `inputs` (any eagerpy-convertible tensor), returned alike."""

        view = _model_view(model)
        x, restore_type = ep.astensor_(inputs)
        images = np.asarray(x.numpy())
        if images.ndim != 4:
            raise ValueError(f"inputs: expected (B, H, W, C) images (NHWC), got shape {images.shape}")
        if view.mean_size > 1 and images.shape[-1] != view.mean_size:
            raise ValueError(
                f"inputs: {images.shape[-1]} channels (last axis), but the model's preprocessing mean/std has "
                f"{view.mean_size} values: expected NHWC images with one mean/std value per channel"
            )
        classes, targeted = _goal(criterion, len(images))
        lower, upper, scale = view.lower, view.upper, view.scale
        if not np.isfinite(images).all() or images.min(initial=lower) < lower or images.max(initial=upper) > upper:
            raise ValueError(f"inputs: images must be finite and inside the model's bounds ({lower}, {upper})")
        params = dict(self.params)
        if epsilon is not None:
            params["epsilon"] = float(epsilon) / float(scale)
        x01 = np.clip((images.astype(np.float32) - lower) / scale, 0.0, 1.0)  # clip: rounding only, checked above
        adversarial = attack_unit_images(self.attack_name, view.logits, x01, classes, targeted, params)
        out = np.clip(adversarial * scale + lower, lower, upper).astype(images.dtype)
        return restore_type(ep.from_numpy(x, out))


class SmoothadvMinimizationAttack(_SmoothadvAttack, fb.attacks.base.MinimizationAttack):
    """An L2 minimisation attack of :mod:`smoothadv_tf.attacks` (``attack_name``, one of
    :data:`MINIMIZATION_ATTACKS`) as a foolbox ``MinimizationAttack`` on an ``fb.TensorFlowModel``.

    ``SmoothadvMinimizationAttack(preset="mnist", protocol="paper", **params)``: the library's parameters of
    the attack are the ``preset`` ("mnist" or "imagenet", §5.2) under the ``protocol`` ("paper" or "strong";
    it decides C&W's and sC&W's binary search), with `params` (the attack's keyword options, e.g.
    ``iterations=``, ``alpha=``, on the [0, 1] scale whatever the model's bounds) over them, checked at once
    (one ValueError naming a bad option); the attribute ``params`` holds them. Targets are not an option: pass
    ``fb.criteria.TargetedMisclassification``. Calling it (foolbox's ``__call__``) with ``epsilons`` in the
    model's bounds units returns ``(raw, clipped, success)``: the attack runs once, the raw images are the direct
    call's ``AttackResult.adversarial`` mapped to the bounds, foolbox clips them to each ε and judges them.
    The distance is foolbox's L2 (``fb.distances.l2``)."""

    _KIND = MINIMIZATION_ATTACKS

    def run(self, model, inputs, criterion, *, early_stop: float | None = None, **kwargs):
        """foolbox's ``MinimizationAttack.run``: the library's attack on `inputs` (NHWC, in ``model.bounds``)
        under `criterion` (Misclassification or labels, TargetedMisclassification), its images in the model's
        bounds. `early_stop` is accepted and not used: the library's attack minimises on its own schedule."""
        fb.attacks.base.raise_if_kwargs(kwargs)
        del early_stop
        return self._attack(model, inputs, criterion, None)


class SmoothadvFixedEpsilonAttack(_SmoothadvAttack, fb.attacks.base.FixedEpsilonAttack):
    """An L2 attack of :mod:`smoothadv_tf.attacks` with a budget ε (``attack_name``, one of
    :data:`FIXED_EPSILON_ATTACKS`) as a foolbox ``FixedEpsilonAttack`` on an ``fb.TensorFlowModel``.

    Constructed as :class:`SmoothadvMinimizationAttack` (``preset``, ``protocol``, the library's keyword options
    on the [0, 1] scale), except that ε is not an option: each of foolbox's ``epsilons`` (in the model's bounds
    units) runs the attack once with the library's ``epsilon`` = ε / (upper - lower); ε = 0 returns the images
    unchanged. Calling it returns foolbox's ``(raw, clipped, success)``, one raw and one clipped image batch per
    ε. The distance is foolbox's L2 (``fb.distances.l2``)."""

    _KIND = FIXED_EPSILON_ATTACKS
    _NOT_OPTIONS = {
        **_SmoothadvAttack._NOT_OPTIONS,
        "epsilon": "the L2 budget is each of foolbox's epsilons=, in the model's bounds units",
    }

    def run(self, model, inputs, criterion, *, epsilon: float, **kwargs):
        """foolbox's ``FixedEpsilonAttack.run``: the library's attack on `inputs` (NHWC, in ``model.bounds``)
        under `criterion` with the L2 budget `epsilon` in the model's bounds units, its images in the bounds."""
        fb.attacks.base.raise_if_kwargs(kwargs)
        if not np.isfinite(epsilon) or epsilon < 0:
            raise ValueError(f"epsilon={epsilon!r}: expected a finite L2 budget >= 0 (in the model's bounds units)")
        if epsilon == 0:
            _model_view(model)  # refuse what the attack would refuse, even when nothing runs
            _goal(criterion, len(ep.astensor(inputs)))
            return inputs
        return self._attack(model, inputs, criterion, epsilon)


class SmoothCarliniWagnerL2(SmoothadvMinimizationAttack):
    """sC&W (eq. 18): C&W's objective on the latent z with r = ŝ_α(z) (eq. 17, ŝ_α of eq. 9), Adam from z = 0,
    :func:`smoothadv_tf.attacks.smooth_carlini_wagner_l2` as a foolbox ``MinimizationAttack``."""

    attack_name = "smooth_carlini_wagner_l2"


class CarliniWagnerL2(SmoothadvMinimizationAttack):
    """C&W L2 (eq. 4), the plain twin of :class:`SmoothCarliniWagnerL2`:
    :func:`smoothadv_tf.attacks.carlini_wagner_l2` as a foolbox ``MinimizationAttack``."""

    attack_name = "carlini_wagner_l2"


class SmoothDDN(SmoothadvMinimizationAttack):
    """sDDN: DDN's decoupled direction and norm on the latent z with r = ŝ_α(z) (ŝ_α of eq. 9; beyond the
    paper), :func:`smoothadv_tf.attacks.smooth_ddn` as a foolbox ``MinimizationAttack``."""

    attack_name = "smooth_ddn"


class DDN(SmoothadvMinimizationAttack):
    """DDN (Rony et al. 2019), the plain twin of :class:`SmoothDDN`: :func:`smoothadv_tf.attacks.ddn` as a
    foolbox ``MinimizationAttack`` (8-bit judged; foolbox's own ``DDNAttack`` judges float images)."""

    attack_name = "ddn"


class SmoothPGD2(SmoothadvFixedEpsilonAttack):
    """sPGD₂ (eq. 12): x ← c(x - n(ŝ_α(g))), PGD₂ with its gradient g smoothed by ŝ_α (eq. 9) before the
    normalisation, :func:`smoothadv_tf.attacks.smooth_pgd2` as a foolbox ``FixedEpsilonAttack``."""

    attack_name = "smooth_pgd2"


class PGD2(SmoothadvFixedEpsilonAttack):
    """PGD₂ (eq. 10-11), the plain twin of :class:`SmoothPGD2`: :func:`smoothadv_tf.attacks.pgd2` as a foolbox
    ``FixedEpsilonAttack``."""

    attack_name = "pgd2"
