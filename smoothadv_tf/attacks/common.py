"""What every attack shares: the result type, the judgement, the margin loss, and the traced-loop cache.

Every attack takes a model (a Keras model or any callable mapping [0, 1] NHWC images to logits), images x in
[0, 1] and their true labels y, works on the whole batch at once (each image keeps its own state), and returns
an :class:`AttackResult`. All attacks are untargeted with the margin loss of eq. (3) unless `target` labels are
given. Success and distortion are judged on the 8-bit-quantised adversarial image (what a PNG stores; the
authors' code did the same) unless ``quantize=False``. Distortion is the L2 norm on [0, 1] pixels.

Each attack loop runs in one `tf.function` (binary search included): no host round trip per step. The traced
loops are cached per model (:func:`_compiled`) and called on padded batches (:func:`_run_padded`); called
inside a ``tf.distribute`` strategy's scope, each loop runs per replica on its share of the batch.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from smoothadv_tf.smoothing import DENSE_MAX_PIXELS


# ----------------------------------------------------------------------------------------------- results
@dataclass
class AttackResult:
    """Per-image outcome. `adversarial` is the (quantised) image that was judged.

    Each image is in one of three states (`status`): attacked and succeeded (`success`), attacked and failed
    (`attacked & ~success`), or not attacked because the model already misclassified it (`~attacked`; such an
    image is returned unchanged and never counts as a success). `p_suc` and `mean_distortion` are eq. (20)
    over the attacked images."""

    adversarial: np.ndarray  # (B, H, W, C) in [0, 1]
    success: np.ndarray  # (B,) bool: attacked, and prediction != label (or == target)
    distortion: np.ndarray  # (B,) L2 distance to x on [0, 1] pixels
    prediction: np.ndarray  # (B,) int: the model's prediction on `adversarial`
    iterations: np.ndarray  # (B,) int: gradient steps spent on the image
    originally_correct: np.ndarray  # (B,) bool: the model classified x correctly (only these are attacked)

    def __len__(self):
        return len(self.success)

    @property
    def attacked(self) -> np.ndarray:
        return self.originally_correct

    @property
    def status(self) -> np.ndarray:
        """(B,) str: "succeeded", "failed" or "not attacked"."""
        return np.where(~self.attacked, "not attacked", np.where(self.success, "succeeded", "failed"))

    @property
    def p_suc(self) -> float:
        """Eq. (20): N_suc / N over the N attacked (originally correctly classified) images."""
        return float(self.success[self.attacked].mean()) if self.attacked.any() else float("nan")

    @property
    def mean_distortion(self) -> float:
        """Eq. (20): D̄, the mean distortion conditional on success."""
        return float(self.distortion[self.success].mean()) if self.success.any() else float("nan")


# ---------------------------------------------------------------------------------------- shared pieces
def quantize(x: tf.Tensor) -> tf.Tensor:
    """Round to the nearest of 256 levels, as an 8-bit PNG stores the image."""
    return tf.round(x * 255.0) / 255.0


def logits_of(model, x: tf.Tensor) -> tf.Tensor:
    """The model's logits as float32, whatever its compute dtype (mixed-precision models give float16 or
    bfloat16 logits, in which the margin loss and Adam's moments would overflow or lose the small steps)."""
    logits = model(x, training=False) if isinstance(model, keras.Model) else model(x)
    return tf.cast(logits, tf.float32)


def margin_loss(
    logits: tf.Tensor,
    labels: tf.Tensor,
    margin: float = 0.0,
    targeted: bool = False,
    positive_part: bool = True,
) -> tf.Tensor:
    """Eq. (3): [y_t - max_{i != t} y_i + m]_+ (untargeted) or [max_{i != t} y_i - y_t + m]_+ (targeted)."""
    onehot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
    label_logit = tf.reduce_sum(onehot * logits, -1)
    best_other = tf.reduce_max(logits - 1e9 * onehot, -1)  # finite mask: no inf * 0 in the gradient
    value = (best_other - label_logit if targeted else label_logit - best_other) + margin
    return tf.nn.relu(value) if positive_part else value


def is_adversarial(logits: tf.Tensor, labels: tf.Tensor, targeted: bool) -> tf.Tensor:
    pred = tf.argmax(logits, -1, output_type=labels.dtype)
    return tf.equal(pred, labels) if targeted else tf.not_equal(pred, labels)


def meets_margin(logits: tf.Tensor, labels: tf.Tensor, margin: float, targeted: bool) -> tf.Tensor:
    """cleverhans' (and foolbox's) C&W success test: the decision still holds with the label's logit raised by
    the margin m (untargeted) or the target's lowered by m (targeted), i.e. eq. (3)'s margin is met."""
    shift = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype) * tf.cast(margin, logits.dtype)
    return is_adversarial(logits - shift if targeted else logits + shift, labels, targeted)


def l2_norm(x: tf.Tensor) -> tf.Tensor:
    """Per-image L2 norm over (H, W, C)."""
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=[1, 2, 3]))


def _per_image(v: tf.Tensor) -> tf.Tensor:
    return v[:, None, None, None]


def _check_inputs(x, y, target):
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    if x.ndim != 4:
        raise ValueError(f"x: expected (B, H, W, C) images, got shape {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(f"y: expected {len(x)} labels, got shape {y.shape}")
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise ValueError("x: images must be finite and in [0, 1]")
    if target is not None:
        target = np.asarray(target, np.int64)
        if target.shape != y.shape:
            raise ValueError(f"target: expected {len(x)} labels, got shape {target.shape}")
    return x, y, target


def _finish(model, x, y, target, x_adv, iterations, originally_correct, quantize_output) -> AttackResult:
    """Judge the final images: quantise, predict, measure distortion (one place for all attacks)."""
    judged = quantize(x_adv) if quantize_output else x_adv
    logits = logits_of(model, judged)
    goal = tf.constant(target if target is not None else y)
    success = is_adversarial(logits, goal, target is not None).numpy() & np.asarray(originally_correct, bool)
    return AttackResult(
        adversarial=judged.numpy(),
        success=success,
        distortion=l2_norm(judged - x).numpy(),
        prediction=tf.argmax(logits, -1).numpy(),
        iterations=np.asarray(iterations, np.int64),
        originally_correct=np.asarray(originally_correct, bool),
    )


# Traced attack loops: model -> {static configuration: _Traced}. Models are held weakly (a deleted model frees
# its traced functions, which reach the model only through a weak reference); callables that cannot be
# weakly referenced are kept, by id, until clear_compiled_cache().
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PINNED: dict = {}


def clear_compiled_cache() -> None:
    """Forget every traced attack loop (they are rebuilt on the next call)."""
    _COMPILED.clear()
    _PINNED.clear()


class _Traced:
    """One tf.function and the batch sizes it was traced for. A batch is padded up to a traced size at most
    PAD_FACTOR times as large instead of tracing again; padded images are never attacked (results do not
    depend on batch-mates) but cost compute. Measured on C4 (2-core CPU): a retrace costs ~1-1.5 s, FGSM on 100
    images 0.3 s, paper-protocol C&W on 100 images 18 s — so padding 60 images to 100 wins for FGSM (0.28 s
    against 0.46 s with a retrace) and loses for C&W (18.2 s against 12.5 s); a 25 % margin keeps padding
    cheap for every attack. (A None batch dimension is not an option: the dense ŝ_α needs a static one.)
    Under a tf.distribute strategy the same loop runs once per replica on its share of the batch
    (:meth:`distributed`), traced for the per-replica batch size."""

    PAD_FACTOR = 1.25

    def __init__(self, fn):
        self.fn = fn
        self.sizes: set[int] = set()
        self._per_strategy: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def batch_size_for(self, n: int) -> int:
        fits = [s for s in self.sizes if n <= s <= self.PAD_FACTOR * n]
        if fits:
            return min(fits)
        self.sizes.add(n)
        return n

    def distributed(self, strategy) -> _Traced:
        """The loop run by every replica of `strategy` (``strategy.run`` inside one tf.function)."""
        if not isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.OneDeviceStrategy)):
            raise ValueError(
                f"{type(strategy).__name__}: the attacks split batches over the devices of one process "
                "(MirroredStrategy, OneDeviceStrategy); across machines, run shards (docs/cluster.md)"
            )
        if strategy not in self._per_strategy:
            fn, get_strategy = self.fn, weakref.ref(strategy)  # weak: the cache must not keep the strategy alive

            @tf.function
            def run(args, scalars):
                return get_strategy().run(fn, args=(*args, *scalars))

            self._per_strategy[strategy] = _Traced(run)
        return self._per_strategy[strategy]


def _compiled(model, key, build) -> _Traced:
    """The traced loop of `model` for static configuration `key`; `build(get_model)` traces it."""
    try:
        per_model = _COMPILED.setdefault(model, {})
        get_model = weakref.ref(model)
    except TypeError:  # not weakly referenceable (or unhashable)
        per_model = _PINNED.setdefault(id(model), ({}, model))[0]
        get_model = lambda: model  # noqa: E731
    if key not in per_model:
        per_model[key] = _Traced(build(get_model))
    return per_model[key]


def _run_padded(traced: _Traced, batch: list[np.ndarray], *scalars):
    """Call a traced loop on per-image arrays (first axis = batch; the third must be `originally_correct`,
    padded with False so that padding images are not attacked), padding to a traced size; unpad the outputs.

    Inside a ``tf.distribute`` strategy's scope (e.g. ``MirroredStrategy``), the batch is split into equal
    consecutive shares, one per replica, each attacked by the same loop on its device inside ``strategy.run``;
    the outputs are concatenated back in order. Every image keeps its own state, so results do not depend on
    how the batch is split (tested: bitwise equal records on 1 and 2 devices)."""
    n = len(batch[0])
    distributed = tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context()
    strategy = tf.distribute.get_strategy() if distributed else None
    replicas = strategy.num_replicas_in_sync if distributed else 1
    if distributed:
        traced = traced.distributed(strategy)
    share = traced.batch_size_for(-(-n // replicas))  # images per replica (ceil), padded to a traced size
    size = share * replicas
    if size > n:
        pad = [np.repeat(a[-1:], size - n, axis=0) for a in batch]
        pad[2] = np.zeros(size - n, bool)
        batch = [np.concatenate([a, p]) for a, p in zip(batch, pad)]
    if not distributed:
        outputs = traced.fn(*[tf.constant(a) for a in batch], *scalars)
    else:
        shares = [
            strategy.experimental_distribute_values_from_function(
                lambda ctx, a=a: tf.constant(a[ctx.replica_id_in_sync_group * share :][:share])
            )
            for a in batch
        ]
        outputs = traced.fn(tuple(shares), scalars)
        outputs = [tf.concat(strategy.experimental_local_results(o), 0) for o in outputs]
    return [o[:n] for o in outputs]


def _smoothing_options(alpha, solver, cg_iterations, cg_gradient, graph, image_shape) -> dict:
    """Smoother options of the smooth attacks; solver="auto" is the dense ŝ_α (eq. 9 as a matrix) up to
    smoothing.DENSE_MAX_PIXELS pixels (64 x 64) and CG above, as the paper does for MNIST and ImageNet."""
    if solver == "auto":
        solver = "dense" if image_shape[1] * image_shape[2] <= DENSE_MAX_PIXELS else "cg"
    return {
        "alpha": alpha,
        "solver": solver,
        "iterations": cg_iterations,
        "gradient": cg_gradient,
        **(graph or {}),
    }


def _originally_correct(model, x, y) -> np.ndarray:
    return np.argmax(logits_of(model, tf.constant(x)).numpy(), -1) == y
