"""C4, the MNIST network of paper §5.2, and its clean / adversarial training.

Conv 64 (8x8, stride 2, same) -> ReLU -> Conv 128 (6x6, stride 2, valid) -> ReLU -> Conv 128 (5x5, stride 1,
valid) -> ReLU -> Dense 10 (logits). Input: [0, 1] images, 28x28x1. (The padding follows the cleverhans
basic CNN the paper's C4 comes from; on 28x28 it ends in a 1x1x128 map.)

Adversarial training follows Kurakin et al. 2016 ("step l.l", the paper's adversarially trained models): each
batch has half its examples replaced by one-step least-likely-class examples
x_adv = clip(x - ε sign(∇_x CE(f(x), y_ll))), y_ll = argmin f(x), with ε drawn per example uniformly in
[0, ε_max]; the loss is (CE_clean + λ CE_adv) / (m - k + λ k) with k/m = `adversarial_fraction` and λ = 0.3.
"""

from __future__ import annotations

import os
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
    adversarial_training: bool = False,
    adversarial_epsilon: float = 0.3,
    adversarial_fraction: float = 0.5,
    adversarial_weight: float = 0.3,
) -> keras.Model:
    """Train C4 with Adam on (images in [0,1], int labels); optionally step-l.l adversarial training.
    Batches are whole (the last partial one of an epoch is left out), so `batch_size` may not exceed the images."""
    if not 1 <= batch_size <= len(train_images):
        raise ValueError(f"batch_size={batch_size}: need 1..{len(train_images)} (the training images)")
    keras.utils.set_random_seed(seed)
    model = c4(int(train_labels.max()) + 1, train_images.shape[1:])
    optimizer = keras.optimizers.Adam(learning_rate)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    gen = tf.random.Generator.from_seed(seed)

    @tf.function  # no XLA: its CPU convolutions are ~10x slower than oneDNN's here
    def step(x, y):
        if adversarial_training:
            k = int(round(adversarial_fraction * batch_size))
            x_adv = x[:k]
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                logits = model(x_adv, training=False)
                least_likely = tf.argmin(logits, -1)
                loss_ll = tf.reduce_sum(ce(least_likely, logits))
            eps = gen.uniform((tf.shape(x_adv)[0], 1, 1, 1), 0.0, adversarial_epsilon)
            x_adv = tf.clip_by_value(x_adv - eps * tf.sign(tape.gradient(loss_ll, x_adv)), 0.0, 1.0)
            x_in = tf.concat([x_adv, x[k:]], 0)
        with tf.GradientTape() as tape:
            per_example = ce(y, model(x if not adversarial_training else x_in, training=True))
            if adversarial_training:
                n_adv = tf.cast(tf.shape(x_adv)[0], tf.float32)
                n = tf.cast(tf.shape(x)[0], tf.float32)
                weights = tf.concat(
                    [
                        tf.fill([tf.shape(x_adv)[0]], adversarial_weight),
                        tf.ones([tf.shape(x)[0] - tf.shape(x_adv)[0]]),
                    ],
                    0,
                )
                loss = tf.reduce_sum(weights * per_example) / (n - n_adv + adversarial_weight * n_adv)
            else:
                loss = tf.reduce_mean(per_example)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    n = len(train_images) - len(train_images) % batch_size  # fixed batch shape: one XLA compile
    for epoch in range(epochs):
        start, order, losses = time.time(), rng.permutation(len(train_images))[:n], []
        progbar = keras.utils.Progbar(n // batch_size, verbose=1 if logging.level_info() else 0)
        for b in range(n // batch_size):
            idx = order[b * batch_size : (b + 1) * batch_size]
            losses.append(float(step(train_images[idx], train_labels[idx])))
            if b % 50 == 0:
                progbar.update(b, [("loss", losses[-1])])
        progbar.update(n // batch_size, [("loss", float(np.mean(losses)))], finalize=True)
        logging.info("epoch %d/%d: loss %.4f (%.0fs)", epoch + 1, epochs, np.mean(losses), time.time() - start)
    return model


def load_or_train_c4(
    path: str,
    dataset: str = "fashion_mnist",
    data_dir: str | None = None,
    adversarial_training: bool = False,
    **train_options,
) -> keras.Model:
    """Load a cached C4 from `path` (a .keras file), or train it on the dataset's training split and save it."""
    if os.path.exists(path):
        return keras.models.load_model(path)
    from smoothadv_tf.data import load_dataset

    train = load_dataset(dataset, data_dir, split="train")
    logging.info("training C4 on %s (%d images, adversarial=%s) -> %s", dataset, len(train), adversarial_training, path)
    model = train_c4(train.images, train.labels, adversarial_training=adversarial_training, **train_options)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.keras"  # write then rename: a killed run never leaves a half-written model
    model.save(tmp)
    os.replace(tmp, path)
    return model
