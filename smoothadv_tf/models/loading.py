"""Loading the model a run attacks: by its source name (the ``--model`` values of
:data:`smoothadv_tf.config.MODEL_NAMES`, ``keras:<Name>``, ``savedmodel:<dir>``), with one clear error
(:class:`~smoothadv_tf.models.slim.CheckpointError`, :class:`~smoothadv_tf.data.DataError`) for a file that
cannot be used, a model that does not take the images, or labels outside its classes.
"""

from __future__ import annotations

import contextlib
import os

import keras
import numpy as np
from absl import logging

from smoothadv_tf.config import C4_MODELS, DEFAULT_C4_EPOCHS, DEFAULT_TRAIN_ATTACK, MODELS_DIR, c4_cache_path
from smoothadv_tf.data import DataError, Dataset
from smoothadv_tf.errors import ConfigError
from smoothadv_tf.models.applications import keras_application
from smoothadv_tf.models.c4 import load_or_train_c4
from smoothadv_tf.models.slim import CheckpointError
from smoothadv_tf.models.wrap import from_saved_model


def load_model(
    name: str,
    dataset: str,
    checkpoint: str | None = None,
    seed: int = 0,
    *,
    epochs: int = DEFAULT_C4_EPOCHS,
    data_dir: str | None = None,
    strategy=None,
    flag: str = "--checkpoint",
    train_attack: str | None = None,
    train_params: dict | None = None,
):
    """A model with the [0,1] -> logits contract, its weights on `strategy`'s devices (None: TensorFlow's
    default placement). A C4 without a checkpoint is trained once per (dataset, mode, training, seed, epochs)
    and cached under models/ (:func:`~smoothadv_tf.config.c4_cache_path`; MNIST read from `data_dir`); a given
    checkpoint must exist and hold finite weights. `flag` names the checkpoint in errors. The adversarially
    trained C4 (c4_adv) is trained against `train_attack` (default: the paper's step l.l) with `train_params`
    over its preset budget (:data:`smoothadv_tf.presets.TRAINING_PRESETS`)."""
    if name in C4_MODELS and checkpoint is None:
        adversarial = name == "c4_adv"
        train_attack = (train_attack or DEFAULT_TRAIN_ATTACK) if adversarial else None
        train_params = dict(train_params or {}) if adversarial else None
        path = c4_cache_path(name, dataset, seed, epochs, train_attack, train_params)
        # Trained (if not cached) outside any strategy, so the C4 does not depend on the devices; then loaded
        # into the devices' scope when there is one.
        model = load_or_train_c4(
            path,
            dataset,
            data_dir if dataset == "mnist" else None,
            train_attack=train_attack,
            train_params=train_params,
            seed=seed,
            epochs=epochs,
        )
        if strategy is None:
            return model
        checkpoint, flag = path, "the cached C4"
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        return _load_model(name, checkpoint, flag)


def _load_model(name: str, checkpoint: str | None, flag: str):
    if name in C4_MODELS:
        return load_c4(checkpoint, flag)
    kind, _, rest = name.partition(":")
    if kind in ("keras", "savedmodel"):
        return load_foreign_model(kind, rest, checkpoint, flag)
    from smoothadv_tf.models import slim

    if checkpoint is None:
        default = os.path.join(MODELS_DIR, slim.CHECKPOINTS[name])
        raise ConfigError(
            f"--model={name} needs {flag} (expected e.g. {default}; "
            "see models/README.md and scripts/download_checkpoints.py)"
        )
    return slim.build(name, checkpoint)


def load_foreign_model(kind: str, what: str, weights: str | None, flag: str = "--checkpoint"):
    """keras:<Name> (weights file, or the ImageNet weights Keras downloads) or savedmodel:<dir>."""
    try:
        if kind == "keras":
            return keras_application(what, weights=weights or "imagenet")
        return from_saved_model(what)
    except Exception as e:  # noqa: BLE001 - Keras / TF raise many types for a missing download or a bad file
        source = f"{flag}={weights}" if weights else f"--model={kind}:{what}"
        raise CheckpointError(f"{source}: cannot load ({type(e).__name__}: {e})") from e


def load_c4(path: str, flag: str = "--checkpoint"):
    """A C4 (any Keras model) from a .keras file; CheckpointError naming `flag` for a missing, unreadable or
    non-finite one."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{flag}={path}: no such file")
    try:
        model = keras.models.load_model(path)
    except Exception as e:  # noqa: BLE001 - Keras raises several types for a damaged archive
        raise CheckpointError(f"{flag}={path}: cannot load a Keras model ({type(e).__name__}: {e})") from e
    bad = [w.path for w in model.weights if not np.isfinite(np.asarray(w)).all()]
    if bad:
        raise CheckpointError(f"{flag}={path}: NaN or Inf in {', '.join(bad[:10])}")
    return model


def check_fits(model, dataset, dataset_name: str, what: str) -> None:
    """Refuse (DataError) images whose shape the model does not take, before anything is written; the
    message names the dataset and the model (`what`) as their flags."""
    try:  # a wrapped model (slim, SavedModel) declares its input through the model inside
        expected = getattr(getattr(model, "inner", model), "input_shape", None)
    except (AttributeError, ValueError):  # a subclassed Keras model that was never built
        expected = None
    if isinstance(expected, list):
        expected = expected[0]
    if expected is None or len(dataset) == 0:
        return
    got = dataset.images.shape[1:]
    if len(expected) != 4 or any(e is not None and e != g for e, g in zip(expected[1:], got)):
        raise DataError(
            f"--dataset={dataset_name}: images are {'x'.join(map(str, got))}, but --model={what} takes "
            f"{'x'.join('?' if e is None else str(e) for e in expected[1:])}"
        )


def fit_labels(model, dataset, dataset_name: str, model_name: str):
    """The dataset with labels in the model's class convention. NIPS-17 labels are slim's (1001 classes, 0 =
    background); for a 1000-class model (keras.applications) they become 0..999. Labels of an image folder's
    labels.csv are taken as the attacked model's own class indices, and labels outside the model's classes are
    a DataError."""
    from smoothadv_tf.attacks import logits_of

    classes = int(logits_of(model, dataset.images[:1]).shape[-1])
    labels = dataset.labels
    known = labels[labels >= 0]  # -1: unlabelled, attacked w.r.t. the model's own prediction
    if dataset.num_classes == classes or known.size == 0:
        return dataset
    if dataset_name == "nips17" and dataset.num_classes == 1001 and classes == 1000:
        if (known == 0).any():
            raise DataError("--dataset=nips17: label 0 (slim's background class) has no class in a 1000-class model")
        logging.info("NIPS-17 labels 1..1000 (slim's convention) mapped to the model's 0..999")
        return Dataset(dataset.images, np.where(labels >= 0, labels - 1, labels), dataset.ids, classes)
    if known.max() >= classes:
        raise DataError(
            f"--dataset={dataset_name}: labels go up to {int(known.max())}, but --model={model_name} has "
            f"{classes} classes"
        )
    return dataset
