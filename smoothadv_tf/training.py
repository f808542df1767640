"""Adversarial training against plain and smooth perturbations, as Keras expects it to look.

:class:`AdversarialTraining` wraps any Keras classifier that outputs logits. Its ``train_step`` crafts
adversarial examples for a fixed share of each batch with one of the library's attacks (the classifier in
inference mode while crafting), and hands the clean/adversarial mix to Keras's own ``train_step`` with per-example
weights. So ``fit``, callbacks, validation, ``tf.distribute`` strategies and mixed precision work unchanged, and
``save`` (what ``ModelCheckpoint`` calls by default) writes the plain classifier, which loads without this
library; ``save_weights`` keeps the trainer's own weights with its optimizer state (what ``BackupAndRestore`` and
``ModelCheckpoint(save_weights_only=True)`` call: training state, for resuming), and
``trainer.classifier.save_weights`` the classifier's alone. Training metrics are on the weighted mix.

The training attacks (:data:`TRAIN_ATTACKS`):

- ``step_ll``: one step towards the least-likely class, x - ε sign(∇ₓ CE(f(x), y_ll)) with ε drawn per example
  in [0, ε_max] (Kurakin et al. 2016; the paper's adversarially trained models, §5.3, Table 2);
- ``fgsm_rs``: FGSM from a uniform random start in the L∞ ε-ball, step 1.25 ε (Wong et al., ICLR 2020);
- ``pgd2``: k steps of PGD₂ (eq. 10-11), the library's loop (:func:`~smoothadv_tf.attacks.gradient.gradient_loop`);
- ``smooth_pgd2``: k steps of sPGD₂ (eq. 12), the same loop with the gradient smoothed by ŝ_α;
- ``smooth_pgd2_latent``: PGD₂ on the latent z with r = ŝ_α(z) (eq. 17) and the exact projection;
- ``smooth_ddn``: DDN on z, stepping along the image gradient (``direction="image"``, attacks/minimum_norm.py).

PGD₂, sPGD₂ and PGD₂ on z run all k steps on every image (no early stop: the model trains on the step-k
iterate); sDDN is DDN, a minimum-norm attack: it returns its least-distortion adversarial iterate, and x itself
for an image it does not make adversarial within its k steps (as Rony et al.'s training does). None is
quantised (training images need not be 8-bit). Which examples of a batch are attacked is fixed by their
position (evenly spread, a share `fraction`), and every random draw is a function of the seed, the optimizer's
step and the example's position in the *global* batch: a batch split evenly over devices trains as on one
device (tested under MirroredStrategy).

Loss: (Σ_clean CE + λ Σ_adv CE) / (m - k + λk), k of the m examples adversarial, λ = `weight` — Kurakin et al.'s
weighted mix (λ = 0.3 for step_ll, the paper's models; λ = 1 for the others, the equal mix of Goodfellow et
al. 2015).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from smoothadv_tf.attacks.common import _declared_image_shape, _smoothing_options, logits_of, outputs_probabilities
from smoothadv_tf.attacks.gradient import gradient_loop
from smoothadv_tf.attacks.minimum_norm import rescaling_loop
from smoothadv_tf.presets import (  # the tables and checks, without TensorFlow (the scripts check flags first)
    SMOOTH_TRAIN_ATTACKS,
    TRAIN_ATTACKS,
    TRAINING_PRESETS,
    check_training_params,
    training_dataset,
    training_params,
)

__all__ = [
    "AdversarialTraining",
    "SMOOTH_TRAIN_ATTACKS",
    "TRAIN_ATTACKS",
    "TRAINING_PRESETS",
    "adversarial_positions",
    "check_training_params",
    "fgsm_random_start",
    "outputs_probabilities",
    "step_ll",
    "training_dataset",
    "training_params",
]


def _attacked(j, fraction: float, floor=np.floor):
    """Whether position j is attacked: ⌊(j+1)f⌋ > ⌊jf⌋ (NumPy, or TensorFlow with floor=tf.floor)."""
    return floor((j + 1) * fraction + 1e-9) > floor(j * fraction + 1e-9)


def adversarial_positions(batch: int, fraction: float) -> np.ndarray:
    """Positions in a batch of `batch` examples that are attacked: floor(batch·fraction) of them, evenly spread
    (position j when ⌊(j+1)f⌋ > ⌊jf⌋: with f = 1/2, the odd ones), so that a batch split into equal consecutive
    shares over devices attacks the same examples as on one device whenever each share holds a whole
    number of them."""
    return np.flatnonzero(_attacked(np.arange(batch), fraction))


def _input_gradient(classifier, x, labels):
    """∇ₓ Σ CE(f(x), labels), the classifier in inference mode (float32 logits under mixed precision)."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits_of(classifier, x)))
    return tape.gradient(loss, x)


def step_ll(classifier, x, epsilons):
    """Kurakin et al.'s one-step least-likely-class example x - ε sign(∇ₓ CE(f(x), argmin f(x))), clipped to
    [0, 1], with one ε per example (`epsilons`)."""
    least_likely = tf.argmin(logits_of(classifier, x), -1)
    g = _input_gradient(classifier, x, least_likely)
    return tf.clip_by_value(x - epsilons[:, None, None, None] * tf.sign(g), 0.0, 1.0)


def fgsm_random_start(classifier, x, y, uniform, epsilon, step):
    """Wong et al.'s FGSM: δ ~ U(-ε, ε) (from `uniform` in [0, 1), x's shape), one signed step of CE's gradient
    at x + δ, δ clipped back to the ε-ball and the image to [0, 1]."""
    delta = (2.0 * uniform - 1.0) * epsilon
    start = tf.clip_by_value(x + delta, 0.0, 1.0)
    g = _input_gradient(classifier, start, y)
    delta = tf.clip_by_value(start - x + step * tf.sign(g), -epsilon, epsilon)
    return tf.clip_by_value(x + delta, 0.0, 1.0)


class AdversarialTraining(keras.Model):
    """`classifier` (a Keras model: [0, 1] images -> logits) trained on clean/adversarial mixes of its batches.

        trainer = AdversarialTraining(classifier, "smooth_pgd2", dataset="fashion_mnist")
        trainer.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=["accuracy"])
        trainer.fit(x, y, batch_size=128, epochs=6, validation_data=(x_val, y_val),
                    callbacks=[keras.callbacks.ModelCheckpoint("c4.keras")])  # saves the plain classifier
        trainer.classifier.save("c4.keras")  # the same; loads with keras.models.load_model, no library needed

    `attack` is one of :data:`TRAIN_ATTACKS`; its budget comes from ``TRAINING_PRESETS[dataset]`` with `params`
    overriding it (:func:`training_params`; ``fraction`` of each batch attacked, ``weight`` λ of their loss).
    Refused with one ValueError before any training: an unknown attack or option, a budget out of its domain,
    a classifier without a declared input shape, or one whose outputs are probabilities. Evaluation
    (``evaluate``, validation) is on clean images. Fixed-shape batches (a tf.data pipeline with
    ``drop_remainder=True``, or arrays whose length the batch size divides) trace the step once with static
    shapes; otherwise Keras traces it once for any batch size, and the positions and draws are computed in the
    graph (same positions and draws; a smooth attack's ``solver="auto"`` then takes Chebyshev, which a small
    colour image's fixed-shape batch may solve densely instead: the same ŝ_α to 1e-6).
    """

    def __init__(self, classifier: keras.Model, attack: str = "step_ll", *, dataset: str = "fashion_mnist",
                 seed: int = 0, **params: Any):  # fmt: skip
        self.params = training_params(attack, dataset, **params)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed={seed!r}: expected an integer >= 0")
        _check_classifier(classifier)
        super().__init__(name=f"adversarial_training_{classifier.name}")
        self.classifier = classifier
        self.attack = attack
        self.dataset = dataset
        self.seed = int(seed)
        self._loops: dict = {}

    def call(self, x, training=False):
        """The classifier's logits for `x`: prediction and evaluation see the plain classifier."""
        return self.classifier(x, training=training)

    # ------------------------------------------------------------------------------------- saving: the classifier
    def save(self, filepath, *args, **kwargs):
        """Save the plain classifier (what ``ModelCheckpoint`` saves each time): it loads without this library."""
        return self.classifier.save(filepath, *args, **kwargs)

    def export(self, filepath, *args, **kwargs):
        """Export the plain classifier (Keras's ``export``, e.g. a SavedModel for serving), not the trainer."""
        return self.classifier.export(filepath, *args, **kwargs)

    # -------------------------------------------------------------------------------------------- the train step
    def train_step(self, data):
        """One training step: the batch's attacked share (:meth:`attacked_positions`) replaced by adversarial
        examples crafted on the current weights (§5.3), then Keras's own step on the mix, the adversarial
        examples weighted λ (``weight``) and the weights normalised to sum to the batch size."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        _check_batch(x, y)
        x = tf.cast(x, tf.float32)
        # the batch size per replica: static for fixed-shape batches, else (a partial last batch) a tensor
        batch = int(x.shape[0]) if x.shape[0] is not None else tf.shape(x, out_type=tf.int64)[0]
        self._batch_size = batch
        positions, weights = self._mix(batch)
        x_part = tf.gather(x, positions)
        y_part = tf.cast(tf.gather(tf.reshape(y, [-1]), positions), tf.int64)
        x_adv = self.craft(x_part, y_part, self._global_positions(positions, batch))
        x = tf.tensor_scatter_nd_update(x, positions[:, None], x_adv)
        if sample_weight is not None:
            weights = weights * tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
        return super().train_step((x, y, weights))

    def _mix(self, batch):
        """(attacked positions, per-example loss weights) of a batch: Σ w·CE / m is then
        (Σ_clean CE + λ Σ_adv CE) / (m - k + λk), the weights summing to m."""
        weight = self.params["weight"]
        if isinstance(batch, int):
            positions = self.attacked_positions(batch)
            if not len(positions):
                raise ValueError(
                    f"fraction={self.params['fraction']}: attacks no example of a batch of {batch} (raise it or the "
                    "batch size)"
                )
            weights = np.ones(batch, np.float32)
            weights[positions] = weight
            return tf.constant(positions, tf.int64), tf.constant(weights * batch / weights.sum())
        attacked = _attacked(tf.cast(tf.range(batch), tf.float64), float(self.params["fraction"]), tf.floor)
        weights = tf.where(attacked, tf.constant(weight, tf.float64), tf.constant(1.0, tf.float64))
        weights = weights * tf.cast(batch, tf.float64) / tf.reduce_sum(weights)
        return tf.where(attacked)[:, 0], tf.cast(weights, tf.float32)

    def attacked_positions(self, batch: int) -> np.ndarray:
        """Positions of a (per-replica) batch that are attacked (:func:`adversarial_positions`)."""
        return adversarial_positions(batch, self.params["fraction"])

    def step_ll_epsilons(self, global_positions):
        """Step l.l's ε per example, uniform in [0, ε_max)."""
        return self._uniform(global_positions, [], 0) * self.params["epsilon"]

    def _global_positions(self, positions, batch):
        """Positions in the global batch (the replicas of a strategy hold equal consecutive shares of it)."""
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group if context is not None else 0
        return tf.cast(replica, tf.int64) * batch + positions

    def _uniform(self, global_positions, shape, salt: int):
        """U[0, 1) draws of `shape` per example: one draw for the whole global batch from (seed, salt, optimizer
        step), each example taking its global position's row, so a split batch draws what one device would."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        rows = tf.cast(replicas * self._batch_size, tf.int64)
        dims = tf.concat([tf.reshape(rows, [1]), tf.constant(list(shape), tf.int64)], 0)
        seed = tf.stack([tf.constant(self.seed * 16 + salt, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        draws = tf.random.stateless_uniform(dims, seed, dtype=tf.float32)
        return tf.gather(draws, global_positions)

    def craft(self, x, y, global_positions=None):
        """The training attack's examples for images x (float32 [0, 1]) with labels y."""
        p = self.params
        if global_positions is None:  # called on its own: the batch is x
            self._batch_size = tf.shape(x, out_type=tf.int64)[0]
            global_positions = tf.range(self._batch_size)
        if self.attack == "step_ll":
            return step_ll(self.classifier, x, self.step_ll_epsilons(global_positions))
        if self.attack == "fgsm_rs":
            uniform = self._uniform(global_positions, x.shape[1:], 1)
            return fgsm_random_start(self.classifier, x, y, uniform, p["epsilon"], p["step"])
        run, scalars = self._loop(tuple(x.shape))
        everyone = tf.ones(tf.shape(y), tf.bool)
        x_adv, _ = run(x, y, everyone, None, *[tf.constant(s, tf.float32) for s in scalars])
        return x_adv

    def _loop(self, shape):
        """The library's traced attack loop for images of `shape` and its run-time scalars (built once)."""
        if shape not in self._loops:
            p, attack = self.params, self.attack
            smoothing = None
            if attack in SMOOTH_TRAIN_ATTACKS:
                smoothing = _smoothing_options(
                    attack,
                    shape,
                    p["alpha"],
                    p["solver"],
                    p.get("cg_iterations", 50),
                    p.get("cg_gradient", "autodiff"),
                    None,
                    iterations=p["iterations"],
                )
            common = {"iterations": p["iterations"], "smoothing": smoothing, "quantize_output": False}
            if attack in ("pgd2", "smooth_pgd2"):
                _, build = gradient_loop(norm="l2", early_stop=False, **common)
                scalars = (p["epsilon"], p["step"])
            elif attack == "smooth_pgd2_latent":
                _, build = rescaling_loop(rule="pgd", early_stop=False, **common)
                scalars = (p["epsilon"], p["step"], p["step"])
            else:  # smooth_ddn
                _, build = rescaling_loop(rule="ddn", gamma=p["gamma"], direction=p["direction"], **common)
                scalars = (p["init_epsilon"], 1.0, 0.01)
            self._loops[shape] = (build(lambda: self.classifier), scalars)
        return self._loops[shape]


def _check_batch(x, y) -> None:
    """Float images and integer class labels (a (B,) or (B, 1) tensor), refused when the step is traced."""
    if not x.dtype.is_floating:
        raise ValueError(f"x: expected float images in [0, 1], got {x.dtype.name} (divide 8-bit images by 255)")
    if not y.dtype.is_integer or (y.shape.rank or 0) > 2 or (y.shape.rank == 2 and y.shape[-1] != 1):
        raise ValueError(
            f"y: expected integer class labels of shape (B,) or (B, 1), got {y.dtype.name} {y.shape} (one-hot labels: "
            "pass their argmax, and SparseCategoricalCrossentropy)"
        )


def _check_classifier(classifier) -> None:
    """A Keras model with a declared input shape whose outputs are logits, checked on one probe batch."""
    if not isinstance(classifier, keras.Model):
        raise ValueError(f"classifier: expected a keras.Model, got {type(classifier).__name__}")
    shape = _declared_image_shape(classifier)
    if shape is None or None in shape:
        raise ValueError(
            f"classifier {classifier.name}: needs a declared (H, W, C) image input (e.g. keras.Input((28, 28, 1))), "
            f"has {shape}"
        )
    probe = np.random.default_rng(0).uniform(0.0, 1.0, (4, *shape)).astype(np.float32)
    if outputs_probabilities(classifier(probe, training=False)):
        raise ValueError(
            f"classifier {classifier.name}: its outputs are probabilities (non-negative, rows summing to 1); "
            "adversarial training wants logits: remove the final softmax"
        )
