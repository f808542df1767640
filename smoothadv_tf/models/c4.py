"""C4, the MNIST network of paper §5.2, and its clean / adversarial training.

Conv 64 (8x8, stride 2, same) -> ReLU -> Conv 128 (6x6, stride 2, valid) -> ReLU -> Conv 128 (5x5, stride 1,
valid) -> ReLU -> Dense 10 (logits). Input: [0, 1] images, 28x28x1. (The padding follows the cleverhans
basic CNN the paper's C4 comes from; on 28x28 it ends in a 1x1x128 map.)

Adversarial training (:func:`train_c4` with a `train_attack`) runs :class:`smoothadv_tf.training.AdversarialTraining`:
by default Kurakin et al. 2016's step l.l, the paper's adversarially trained models (§5.3, Table 2), or any
other training attack of :data:`smoothadv_tf.training.TRAIN_ATTACKS`, smooth ones included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging


def c4(num_classes: int = 10, input_shape=(28, 28, 1), name: str = "c4") -> keras.Model:
    """The C4 network: [0,1] images -> logits."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(64, 8, strides=2, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(128, 6, strides=2, padding="valid", activation="relu", name="conv2"),
            keras.layers.Conv2D(128, 5, strides=1, padding="valid", activation="relu", name="conv3"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(num_classes, name="logits"),
        ],
        name=name,
    )


def accuracy(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Share of `images` whose top logit is their label (the model in inference mode, `batch_size` at a time)."""
    preds = np.concatenate(
        [np.argmax(model(images[i : i + batch_size], training=False), -1) for i in range(0, len(images), batch_size)]
    )
    return float(np.mean(preds == labels))


def train_c4(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    epochs: int = 6,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    train_attack: str | None = None,
    train_params: dict | None = None,
    *,
    dataset: str = "fashion_mnist",
    resume_dir: str | None = None,
    strategy=None,
) -> keras.Model:
    """Train C4 with Adam on (images in [0,1], int labels), clean or adversarially with `train_attack` (one of
    :data:`smoothadv_tf.training.TRAIN_ATTACKS`; its budget the `dataset`'s preset with `train_params` over it)
    through :class:`smoothadv_tf.training.AdversarialTraining` and ``keras.Model.fit``.

    Batches are whole (the last partial one of an epoch is left out), so `batch_size` may not exceed the
    images. The batches are those of the hand-written loop this replaced (a NumPy permutation per epoch drawn
    from ``default_rng(seed)``), and the weights start from ``keras.utils.set_random_seed(seed)``: clean
    training gives that loop's model. With `resume_dir`, the weights and optimizer state are saved there after
    every epoch and a killed run resumes from its last finished epoch (same batches, same random draws; the
    state of a training with other settings is refused);
    `strategy` (e.g. MirroredStrategy) splits each batch over its devices."""
    from smoothadv_tf.training import AdversarialTraining, training_params

    if not 1 <= batch_size <= len(train_images):
        raise ValueError(f"batch_size={batch_size}: need 1..{len(train_images)} (the training images)")
    if train_attack is None and train_params:
        raise ValueError(f"train_params={train_params!r}: only used with a train_attack")
    budget = training_params(train_attack, dataset, **(train_params or {})) if train_attack else None  # checked
    # what a resumed training must share with the one that saved its state (the epochs may grow)
    settings = {
        "train_attack": train_attack,
        "train_params": budget,
        "seed": seed,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "data": hashlib.sha256(  # the labels and a sample of the images
            train_labels.tobytes() + train_images[:: max(1, len(train_images) // 64)].tobytes()
        ).hexdigest()[:16],
    }

    def in_scope():  # the strategy's devices, where the model and the optimizer state are made
        return strategy.scope() if strategy is not None else contextlib.nullcontext()

    keras.utils.set_random_seed(seed)
    with in_scope():
        model = c4(int(train_labels.max()) + 1, train_images.shape[1:])
        trainer = model  # clean: Keras's own train step
        if train_attack is not None:
            trainer = AdversarialTraining(model, train_attack, dataset=dataset, seed=seed, **(train_params or {}))
        trainer.compile(
            keras.optimizers.Adam(learning_rate),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False,  # XLA's CPU convolutions are ~10x slower than oneDNN's here
        )
    rng = np.random.default_rng(seed)
    steps = len(train_images) // batch_size  # whole batches: one shape, one trace
    orders = [rng.permutation(len(train_images))[: steps * batch_size] for _ in range(epochs)]
    first = 0
    if resume_dir:
        with in_scope():
            first = _resume(trainer, resume_dir, train_images.shape[1:], settings, steps)
    if first >= epochs:
        return model
    # One fit over the remaining epochs; batches gathered from the images by the permutations' indices.
    images, labels = tf.constant(train_images), tf.constant(train_labels)
    batches = tf.data.Dataset.from_tensor_slices(np.concatenate(orders[first:]).reshape(-1, batch_size))
    batches = batches.map(lambda i: (tf.gather(images, i), tf.gather(labels, i))).prefetch(2)
    # Keras's progress bar on a terminal; one line per epoch in a log file (the bar would write one per step)
    verbose = (1 if sys.stderr.isatty() else 2) if logging.level_info() else 0
    callbacks = [_EpochLog(epochs)] + ([_ResumeState(resume_dir, settings)] if resume_dir else [])
    trainer.fit(
        batches,
        epochs=epochs,
        initial_epoch=first,
        steps_per_epoch=steps,
        shuffle=False,
        callbacks=callbacks,
        verbose=verbose,
    )
    return model


class _EpochLog(keras.callbacks.Callback):
    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss", float("nan"))
        logging.info("epoch %d/%d: loss %.4f (%.0fs)", epoch + 1, self.epochs, loss, time.time() - self.start)


class _ResumeState(keras.callbacks.Callback):
    """After every epoch: the weights and optimizer state, for :func:`_resume`."""

    def __init__(self, resume_dir: str, settings: dict):
        super().__init__()
        self.resume_dir, self.settings = resume_dir, settings

    def on_epoch_end(self, epoch, logs=None):
        _save_resume_state(self.model, self.resume_dir, self.settings)


RESUME_WEIGHTS = "latest.weights.h5"
RESUME_SETTINGS = "settings.json"


def _resume(trainer, resume_dir: str, image_shape, settings: dict, steps: int) -> int:
    """Restore the weights and optimizer state saved after the last finished epoch; the epoch to start at (the
    optimizer's step count over the steps per epoch: one file holds both, so they cannot disagree).
    ValueError for the state of another training."""
    weights = os.path.join(resume_dir, RESUME_WEIGHTS)
    if not os.path.exists(weights):
        return 0
    try:
        with open(os.path.join(resume_dir, RESUME_SETTINGS)) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = None
    if saved != json.loads(json.dumps(settings)):
        differ = sorted(k for k in settings if (saved or {}).get(k) != json.loads(json.dumps(settings))[k])
        raise ValueError(
            f"resume_dir={resume_dir}: holds the state of another training (differs in {differ or 'all'}); "
            "remove it to start afresh"
        )
    trainer(np.zeros((1, *image_shape), np.float32))  # built, and the optimizer's slots made,
    trainer.optimizer.build(trainer.trainable_variables)  # before they are restored
    trainer.load_weights(weights)
    epoch = int(trainer.optimizer.iterations.numpy()) // steps
    logging.info("resuming after epoch %d from %s", epoch, resume_dir)
    return epoch


def _save_resume_state(trainer, resume_dir: str, settings: dict) -> None:
    """The training's settings (once), then its weights + optimizer state, each written to a temporary file
    and renamed: a kill at any point leaves the previous epoch's state or this one's, never a mix."""
    os.makedirs(resume_dir, exist_ok=True)
    path = os.path.join(resume_dir, RESUME_SETTINGS)
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            json.dump(settings, f)
        os.replace(path + ".tmp", path)
    weights = os.path.join(resume_dir, RESUME_WEIGHTS)
    tmp = weights + ".tmp.weights.h5"
    trainer.save_weights(tmp)
    os.replace(tmp, weights)


def load_or_train_c4(
    path: str,
    dataset: str = "fashion_mnist",
    data_dir: str | None = None,
    train_attack: str | None = None,
    **train_options,
) -> keras.Model:
    """Load a cached C4 from `path` (a .keras file), or train it on the dataset's training split (clean, or
    against `train_attack`) and save it. Training resumes from ``<path>.resume/`` after a kill (its last
    finished epoch), which is removed once the model is saved."""
    if os.path.exists(path):
        return keras.models.load_model(path)
    from smoothadv_tf.data import load_dataset

    train = load_dataset(dataset, data_dir, split="train")
    logging.info("training C4 on %s (%d images, training attack %s) -> %s", dataset, len(train), train_attack, path)
    model = train_c4(
        train.images, train.labels, train_attack=train_attack, dataset=dataset, resume_dir=path + ".resume",
        **train_options,
    )  # fmt: skip
    save_c4(model, path)
    return model


def save_c4(model: keras.Model, path: str) -> None:
    """Save a trained C4 at `path` (written then renamed: a killed run never leaves a half-written model) and
    remove the state its training kept for a resume (``<path>.resume/``)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)
    shutil.rmtree(path + ".resume", ignore_errors=True)
