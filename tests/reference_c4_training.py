"""The hand-written C4 training loop that smoothadv_tf.training.AdversarialTraining replaced (smoothadv_tf/models/c4.py
at 424317b, verbatim but for the C4 builder's import): the reference the wrapper's step l.l is tested against.
Test helper only."""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from smoothadv_tf.models import c4


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
