"""The library's smooth attacks (and their plain twins) as IBM ART ``EvasionAttack`` classes.

    from smoothadv_tf.integrations.art import SmoothCarliniWagnerL2
    x_adv = SmoothCarliniWagnerL2(classifier).generate(x_test)

Each class runs one attack of :mod:`smoothadv_tf.attacks` on an ART ``TensorFlowV2Classifier``:

- :class:`SmoothCarliniWagnerL2`: sC&W, eq. (18): min_z λ‖ŝ_α(z)‖² + ℓ(f(c(x_o + ŝ_α(z))), t), r = ŝ_α(z) (eq. 17);
- :class:`SmoothPGD2`: sPGD₂, eq. (12): x ← c(x - n(ŝ_α(g))), PGD₂ with its gradient g smoothed;
- :class:`SmoothDDN`: DDN on the latent z with r = ŝ_α(z) (beyond the paper);
- :class:`DDN` (ART has no DDN) and :class:`CarliniWagnerL2`, the plain twins.

ŝ_α is the normalised smoothing of eq. (9), ŝ_α(z) = diag(s_α(1))⁻¹ s_α(z), guided by the image attacked. ART
has C&W L2 and PGD L2 of its own (``CarliniL2Method``, ``ProjectedGradientDescent(norm=2)``); scripts/bench_art.py
compares its C&W with ours (docs/results.md).

The classifier is seen on [0, 1] images through :func:`~smoothadv_tf.integrations.unit_interval_model`: an image
x in its ``clip_values`` (lower, upper) is attacked as (x - lower) / (upper - lower), its mean/std
``preprocessing`` applied inside the model, and the result mapped back to the classifier's units. So ``generate``
returns, image for image, the direct call's ``AttackResult.adversarial`` (8-bit quantised by default) scaled back,
and the attack parameters (ε, steps, distortion) are on the [0, 1] scale of the paper (eq. 20) whatever the
clip values. The classifier must have clip values (the attacks need bounded images), NHWC images
(``channels_first=False``, a 3-D ``input_shape``), no preprocessing defences and no preprocessing other than
mean/std standardisation; anything else is refused with one ValueError naming it. Postprocessing defences are
left out of the attack, as ART's own gradient attacks leave them (they act on the predictions only).

Importing this module without ART raises one ImportError naming ``pip install 'smoothadv_tf[art]'``.
"""

from __future__ import annotations

import numpy as np

from smoothadv_tf import presets
from smoothadv_tf.integrations.common import attack_parameters, attack_unit_images, cached_view, require

require("art", "art", "adversarial-robustness-toolbox")  # the one ImportError naming the extra, before any ART name

from art.attacks.attack import EvasionAttack  # noqa: E402
from art.estimators.classification.tensorflow import TensorFlowV2Classifier  # noqa: E402
from art.preprocessing.standardisation_mean_std.numpy import StandardisationMeanStd  # noqa: E402
from art.preprocessing.standardisation_mean_std.tensorflow import StandardisationMeanStdTensorFlow  # noqa: E402
from art.utils import check_and_transform_label_format  # noqa: E402
from tqdm.auto import trange  # noqa: E402

__all__ = ["SmoothadvAttack", "SmoothCarliniWagnerL2", "SmoothPGD2", "SmoothDDN", "DDN", "CarliniWagnerL2"]

# What the constructor takes besides the library's options (ART's conventions, and the parameter source).
_ART_PARAMS = ["preset", "protocol", "targeted", "batch_size", "verbose"]


class SmoothadvAttack(EvasionAttack):
    """An attack of :mod:`smoothadv_tf.attacks` (named by the class attribute ``attack_name``, one of
    :data:`smoothadv_tf.presets.ATTACK_NAMES`) as an ART ``EvasionAttack`` on a ``TensorFlowV2Classifier``.

    ``SmoothadvAttack(classifier, preset="mnist", protocol="paper", targeted=False, batch_size=128,
    verbose=True, **params)``: the library's parameters of the attack are the ``preset`` ("mnist" or
    "imagenet", §5.2) under the ``protocol`` ("paper" or "strong"; it decides C&W's and sC&W's binary search),
    with `params` (the attack's own keyword options, e.g. ``iterations=``, ``alpha=``) over them, checked
    at once (one ValueError naming a bad option). They are on the [0, 1] scale whatever the classifier's
    ``clip_values``. Targets are not an option: pass them as ``generate``'s `y` with ``targeted=True``.

    The subclasses set ``attack_name`` and nothing else; a user may do the same for another attack of the
    library (e.g. ``attack_name = "smooth_fmn"``)."""

    attack_name: str | None = None
    attack_params = EvasionAttack.attack_params + _ART_PARAMS
    _estimator_requirements = (TensorFlowV2Classifier,)

    def __init_subclass__(cls, **kwargs):
        """Give each subclass ART's list of its settable parameters: ours and its attack's options."""
        super().__init_subclass__(**kwargs)
        if cls.attack_name is not None:
            if cls.attack_name not in presets.ATTACK_NAMES:
                raise ValueError(
                    f"{cls.__name__}.attack_name={cls.attack_name!r}: expected one of {presets.ATTACK_NAMES}"
                )
            cls.attack_params = EvasionAttack.attack_params + _ART_PARAMS + list(_options(cls.attack_name))

    def __init__(
        self,
        classifier: TensorFlowV2Classifier,
        *,
        preset: str = "mnist",
        protocol: str = presets.DEFAULT_PROTOCOL,
        targeted: bool = False,
        batch_size: int = 128,
        verbose: bool = True,
        **params,
    ) -> None:
        if self.attack_name is None:
            raise TypeError(f"{type(self).__name__}: set attack_name (or use SmoothCarliniWagnerL2, SmoothPGD2, ...)")
        super().__init__(estimator=classifier)
        _classifier_view(classifier)  # refused here already if the attacks cannot see it on [0, 1]
        self.preset = preset
        self.protocol = protocol
        self._targeted = targeted
        self.batch_size = batch_size
        self.verbose = verbose
        self._overrides: dict = {}
        self._take_options(params)
        self._check_params()

    def _view(self):
        """(lower, upper, the classifier on [0, 1] images) as the classifier is now (ART's ``set_params`` may
        change its clip values or preprocessing); one view per classifier and setting, shared by every attack
        object on it (:func:`~smoothadv_tf.integrations.common.cached_view`), so the traced loops are too."""
        lower, upper, mean, std = _classifier_view(self.estimator)
        view = cached_view(self.estimator, self.estimator.model, lower, upper, mean, std)
        return np.float32(lower), np.float32(upper), view

    # ------------------------------------------------------------------------------------------ parameters
    @property
    def params(self) -> dict:
        """The library parameters every ``generate`` call passes to the attack (preset, protocol, overrides)."""
        return dict(self._params)

    def set_params(self, **kwargs) -> None:
        """ART's ``set_params``: change any of ``attack_params`` (the constructor's keywords and the attack's
        options); the parameters are derived again from ``preset``/``protocol`` with the options given so far
        over them, and checked. A refused change leaves the attack as it was."""
        before = dict(self.__dict__)
        try:
            for key, value in kwargs.items():
                if key not in self.attack_params:
                    raise ValueError(f'The attribute "{key}" cannot be set for this attack.')
                if key in _ART_PARAMS:
                    setattr(self, key, value)
                else:
                    self._take_options({key: value})
            self._check_params()
        except Exception:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _take_options(self, params: dict) -> None:
        if "target" in params:
            raise ValueError(f"{type(self).__name__}: target labels are generate's y with targeted=True, not an option")
        self._overrides = {**self._overrides, **params}  # a new dict: set_params may restore the old one

    def _check_params(self) -> None:
        super()._check_params()
        if not isinstance(self.targeted, (bool, np.bool_)):
            raise ValueError(f"targeted={self.targeted!r}: expected a bool")
        if isinstance(self.batch_size, (bool, np.bool_)) or not isinstance(self.batch_size, (int, np.integer)):
            raise ValueError(f"batch_size={self.batch_size!r}: expected a positive int")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: expected a positive int")
        if not isinstance(self.verbose, (bool, np.bool_)):
            raise ValueError(f"verbose={self.verbose!r}: expected a bool")
        self._params = attack_parameters(self.attack_name, self.preset, self.protocol, **self._overrides)

    def __getattr__(self, name):
        """The attack's options read as attributes (ART's ``__repr__`` lists ``attack_params`` this way)."""
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------------------------------ the attack
    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
        """Adversarial examples of `x` (in the classifier's units, inside its ``clip_values``), float32.

        :param x: images, shape (N, *classifier.input_shape), NHWC.
        :param y: untargeted: the true labels (default: the classifier's predictions, ART's convention, made
            on the image the attack starts from: x rounded to 8 bits on [0, 1] unless ``quantize=False``);
            targeted: the target labels (required). One-hot (N, nb_classes) or indices (N,) / (N, 1).
        :return: the attack's images scaled back to the clip values: for every image, the library's
            ``AttackResult.adversarial`` (8-bit quantised on [0, 1] unless ``quantize=False``): an image the
            classifier already misclassifies (or, targeted, already assigns to its target, judged by its
            prediction) comes back as it was (quantised).

        The images are attacked ``batch_size`` at a time (a progress bar when ``verbose``); each image's result
        does not depend on its batch-mates'. With ``targeted=True`` the true label of each image is taken to
        be the classifier's prediction."""
        if kwargs:
            raise ValueError(f"{type(self).__name__}.generate takes no options {sorted(kwargs)} (only x and y)")
        x = np.asarray(x)
        shape = tuple(self.estimator.input_shape)
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"x: expected images of shape (N, {', '.join(map(str, shape))}), got {x.shape}")
        lower, upper, view = self._view()
        x = x.astype(np.float32)
        if not np.isfinite(x).all() or x.min(initial=lower) < lower or x.max(initial=upper) > upper:
            raise ValueError(f"x: images must be finite and inside the classifier's clip_values ({lower}, {upper})")
        if self.targeted and y is None:
            raise ValueError("Target labels `y` need to be provided for a targeted attack.")
        labels = self._labels(y, len(x)) if y is not None else None
        if not len(x):
            return x.copy()
        x01 = (x - lower) / (upper - lower)
        adversarial = np.empty_like(x01)
        batches = -(-len(x) // self.batch_size)
        name = presets.DISPLAY_NAMES[self.attack_name]
        for b in trange(batches, desc=f"{name} (smoothadv_tf)", disable=not self.verbose):
            part = slice(b * self.batch_size, (b + 1) * self.batch_size)
            adversarial[part] = attack_unit_images(
                self.attack_name,
                view,
                x01[part],
                None if labels is None else labels[part],
                bool(self.targeted),
                self._params,
            )
        return np.clip(adversarial * (upper - lower) + lower, lower, upper).astype(np.float32)

    def _labels(self, y, n: int) -> np.ndarray:
        """Index labels (N,) from ART's one-hot (N, nb_classes) or index (N,) / (N, 1) labels."""
        classes = self.estimator.nb_classes
        y = np.asarray(y)
        if len(y) != n:
            raise ValueError(f"y: {len(y)} labels for {n} images")
        if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
            if not (np.issubdtype(y.dtype, np.integer) or (np.isfinite(y).all() and (y == np.round(y)).all())):
                raise ValueError(f"y: index labels must be integers, got {y.dtype}")
            if y.size and (y.min() < 0 or y.max() >= classes):
                raise ValueError(f"y: index labels must be in [0, {classes}) (the classifier's nb_classes)")
        onehot = check_and_transform_label_format(y, nb_classes=classes, return_one_hot=True)
        if onehot.shape != (n, classes):
            raise ValueError(f"y: expected one-hot labels of shape ({n}, {classes}) or {n} indices, got {y.shape}")
        return np.argmax(onehot, axis=1).astype(np.int64)


def _options(attack: str) -> tuple[str, ...]:
    """The keyword options of library attack `attack` a constructor accepts (all but ``target``)."""
    return (*presets.OPTIONS[attack], *(k for k in presets.NON_SCALAR_OPTIONS[attack] if k != "target"))


def _classifier_view(classifier) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(lower, upper, mean, std) of `classifier`: its clip values and its mean/std standardisation, as
    :func:`~smoothadv_tf.integrations.common.unit_interval_model` takes them; one ValueError naming what the attacks cannot express."""
    shape = tuple(classifier.input_shape)
    if classifier.channels_first:
        raise ValueError(
            "classifier has channels_first=True: the smoothadv_tf attacks take NHWC (channels-last) images; "
            "wrap a channels-last model (channels_first=False)"
        )
    if len(shape) != 3:
        raise ValueError(
            f"classifier input_shape={shape}: the smoothadv_tf attacks take images (height, width, channels), "
            "a 3-D input_shape"
        )
    if classifier.clip_values is None:
        raise ValueError(
            "classifier has no clip_values: the smoothadv_tf attacks need bounded images; "
            "construct it with clip_values=(min, max), e.g. (0, 1) or (0, 255)"
        )
    bounds = [np.asarray(v, np.float32) for v in classifier.clip_values]
    if any(v.size and (v != v.flat[0]).any() for v in bounds):
        raise ValueError(
            "classifier clip_values vary per feature: the smoothadv_tf attacks need one range (min, max) for "
            "every pixel"
        )
    lower, upper = (float(v.flat[0]) for v in bounds)
    if classifier.preprocessing_defences:
        names = [type(d).__name__ for d in classifier.preprocessing_defences]
        raise ValueError(
            f"classifier has preprocessing_defences {names}: the smoothadv_tf attacks run on the model with "
            "mean/std standardisation only; attack the classifier without its defences"
        )
    mean, std = np.float32(0.0), np.float32(1.0)
    step = classifier.preprocessing
    if step is not None:
        if not isinstance(step, (StandardisationMeanStd, StandardisationMeanStdTensorFlow)):
            raise ValueError(
                f"classifier preprocessing {type(step).__name__}: the smoothadv_tf attacks take mean/std "
                "standardisation only (preprocessing=(mean, std))"
            )
        if step.apply_predict:  # else prediction (and ART's gradients) skip it, and so do we
            mean, std = np.asarray(step.mean, np.float32), np.asarray(step.std, np.float32)
            if mean.shape != std.shape:  # ART's own standardisation refuses them when it runs
                raise ValueError(
                    f"classifier preprocessing mean of shape {mean.shape} and std of shape {std.shape}: "
                    "ART needs them of one shape"
                )
            batch = (1, *shape)
            for value in (mean, std):
                # ART reshapes a vector whose length is not the channel count onto axis 1 (NCHW's channels)
                nchw_vector = value.ndim == 1 and value.size > 1 and value.size != shape[-1]
                try:
                    fits = not nchw_vector and np.broadcast_shapes(value.shape, batch) == batch
                except ValueError:
                    fits = False
                if not fits:
                    raise ValueError(
                        f"classifier preprocessing mean/std of shape {value.shape}: expected a scalar, one value per "
                        f"channel ({shape[-1]}) or an array broadcasting to input_shape {shape}"
                    )
    return lower, upper, mean, std


class SmoothCarliniWagnerL2(SmoothadvAttack):
    """sC&W (eq. 18): C&W's Adam loop and binary search over c = 1/λ on a latent z, with the perturbation
    r = ŝ_α(z) (eq. 17; ŝ_α of eq. 9) guided by the image: min_z λ‖ŝ_α(z)‖² + ℓ(f(c(x_o + ŝ_α(z))), t).
    :func:`smoothadv_tf.attacks.smooth_carlini_wagner_l2` as an ART attack (see :class:`SmoothadvAttack`)."""

    attack_name = "smooth_carlini_wagner_l2"


class SmoothPGD2(SmoothadvAttack):
    """sPGD₂ (eq. 12): x ← c(x - n(ŝ_α(g))), PGD₂ whose gradient g is smoothed by ŝ_α (eq. 9) before the
    normalisation n. :func:`smoothadv_tf.attacks.smooth_pgd2` as an ART attack (see :class:`SmoothadvAttack`)."""

    attack_name = "smooth_pgd2"


class SmoothDDN(SmoothadvAttack):
    """sDDN (beyond the paper): DDN on the latent z with r = ŝ_α(z) (eq. 17; ŝ_α of eq. 9), its sphere met
    exactly by rescaling z. :func:`smoothadv_tf.attacks.smooth_ddn` as an ART attack (see :class:`SmoothadvAttack`)."""

    attack_name = "smooth_ddn"


class DDN(SmoothadvAttack):
    """DDN (Rony et al., CVPR 2019), the plain twin of :class:`SmoothDDN`, which ART lacks.
    :func:`smoothadv_tf.attacks.ddn` as an ART attack (see :class:`SmoothadvAttack`)."""

    attack_name = "ddn"


class CarliniWagnerL2(SmoothadvAttack):
    """C&W L2 (eq. 4), the plain twin of :class:`SmoothCarliniWagnerL2`: the library's Adam loop (ART's own
    ``CarliniL2Method`` uses a line search; scripts/bench_art.py compares the two).
    :func:`smoothadv_tf.attacks.carlini_wagner_l2` as an ART attack (see :class:`SmoothadvAttack`)."""

    attack_name = "carlini_wagner_l2"
