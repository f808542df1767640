"""The six attacks of the paper (§2, §4, §5.2): FGSM, I-FGSM, PGD₂, C&W L2, sPGD₂ and sC&W.

Every attack takes a model (a Keras model or any callable mapping [0, 1] NHWC images to logits), images x in
[0, 1] and their true labels y, works on the whole batch at once (each image keeps its own state), and returns
an :class:`AttackResult`. All attacks are untargeted with the margin loss of eq. (3) unless `target` labels are
given. Success and distortion are judged on the 8-bit-quantised adversarial image (what a PNG stores; the
authors' code did the same) unless ``quantize=False``. Distortion is the L2 norm on [0, 1] pixels.

Two loops implement the four iterative attacks, each differing from its smooth version only in one map:
- :func:`_gradient_attack` (eq. 10-11): FGSM, I-FGSM, PGD₂ and, with the gradient smoothed by ŝ_α before the
  normalisation, sPGD₂ (eq. 12).
- :func:`_optimality_attack` (eq. 4 / 13 / 18): C&W with the perturbation r = (tanh(w) + 1)/2 - x_o, and sC&W
  with r = ŝ_α(z), z initialised at 0 and x = c(x_o + r) clipped to [0, 1]. Both use Adam, a per-image binary
  search over c = 1/λ, and keep the least-distortion successful iterate (``best_iterate`` says which iterates
  count). C&W's early abort is available per image but off by default: a batch runs while any image is active,
  so it saved no time here, and on Fashion-MNIST it raised C&W's mean distortion from 0.81 to 0.93 by stopping
  images too soon.
Each loop runs in one `tf.function` (binary search included): no host round trip per step. Called inside a
``tf.distribute`` strategy's scope, each loop runs per replica on its share of the batch (:func:`_run_padded`).

Protocols (:data:`PROTOCOLS`, used by :func:`preset`): ``paper`` is what the authors' code ran (cleverhans'
``CarliniWagnerL2`` with one binary-search step of 100 iterations at the §5.2 constant, best iterate judged with
the margin m); ``strong`` is a 5 × 100 binary search keeping the least-distortion 8-bit misclassified iterate.
The paper's Table 1 findings on C&W vs sC&W and PGD₂ depend on which one runs (docs/results.md).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from smoothadv_tf.presets import (  # noqa: F401 - the parameters live beside the attacks' users, TF-free
    ATTACK_NAMES,
    BEST_ITERATE_RULES,
    DEFAULT_PROTOCOL,
    DISPLAY_NAMES,
    OPTIMALITY_ATTACKS,
    PRESETS,
    PROTOCOL_DESCRIPTIONS,
    PROTOCOLS,
    check_params,
    param_type,
    preset,
)
from smoothadv_tf.smoothing import DENSE_MAX_PIXELS, Smoother

LARGE = 1e10  # C&W's "no upper bound yet" for c


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
        if strategy not in self._per_strategy:
            fn = self.fn

            @tf.function
            def run(args, scalars):
                return strategy.run(fn, args=(*args, *scalars))

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


# ------------------------------------------------------------------------------- gradient attacks (§4.1)
def _gradient_attack(
    model,
    x,
    y,
    *,
    epsilon,
    step,
    iterations,
    norm,
    smoothing=None,
    margin=0.0,
    target=None,
    early_stop=True,
    quantize_output=True,
) -> AttackResult:
    """Eq. (10)-(12): x ← c(x - n(g)) with g the loss gradient, optionally smoothed (sPGD₂), n the sign
    (L∞) or the L2 normalisation times `step`, and c the projection on the ε-ball around x_o and on [0,1].
    Each image stops once it is adversarial (judged on the quantised image) when `early_stop`."""
    x, y, target = _check_inputs(x, y, target)
    if not epsilon > 0 or not step > 0 or iterations < 1:
        raise ValueError(f"epsilon={epsilon}, step={step}, iterations={iterations}: must be positive")
    targeted = target is not None
    smooth_key = tuple(sorted(smoothing.items())) if smoothing else None
    key = (
        "gradient",
        norm,
        smooth_key,
        float(margin),
        targeted,
        bool(early_stop),
        bool(quantize_output),
        int(iterations),
    )

    def build(get_model):
        @tf.function
        def run(x_o, goal, originally_correct, epsilon, step):
            model = get_model()
            smoother = Smoother(x_o, **smoothing) if smoothing else None

            def body(k, x_adv, done, used):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x_adv)
                    loss = tf.reduce_sum(
                        margin_loss(logits_of(model, x_adv), goal, margin, targeted, positive_part=False)
                    )
                g = tape.gradient(loss, x_adv)
                if smoother is not None:
                    g = smoother(g, stop_gradient=True)  # eq. (12): smooth the gradient before normalising it
                if norm == "linf":
                    direction = tf.sign(g)
                else:
                    gn = _per_image(l2_norm(g))
                    direction = tf.where(gn > 0, g / tf.where(gn > 0, gn, tf.ones_like(gn)), tf.zeros_like(g))
                r = x_adv - step * direction - x_o
                if norm == "linf":
                    r = tf.clip_by_value(r, -epsilon, epsilon)
                else:
                    rn = _per_image(l2_norm(r))
                    r = r * tf.minimum(1.0, epsilon / tf.maximum(rn, 1e-12))
                x_new = tf.clip_by_value(x_o + r, 0.0, 1.0)
                x_adv = tf.where(_per_image(done), x_adv, x_new)
                used += tf.cast(~done, tf.int64)
                if early_stop:
                    judged = quantize(x_adv) if quantize_output else x_adv
                    done = done | is_adversarial(logits_of(model, judged), goal, targeted)
                return k + 1, x_adv, done, used

            done = ~originally_correct  # misclassified images are reported, not attacked
            used = tf.zeros_like(goal)
            _, x_adv, _, used = tf.while_loop(
                lambda k, x_adv, done, used: (k < iterations) & ~tf.reduce_all(done),
                body,
                (tf.constant(0), x_o, done, used),
            )
            return x_adv, used

        return run

    traced = _compiled(model, key, build)
    originally_correct = _originally_correct(model, x, y)
    goal = target if targeted else y
    x_adv, used = _run_padded(
        traced,
        [x, goal, originally_correct],
        tf.constant(epsilon, tf.float32),
        tf.constant(step, tf.float32),
    )
    return _finish(model, x, y, target, x_adv, used.numpy(), originally_correct, quantize_output)


def _originally_correct(model, x, y) -> np.ndarray:
    return np.argmax(logits_of(model, tf.constant(x)).numpy(), -1) == y


def fgsm(model, x, y, *, epsilon=0.3, margin=0.0, target=None, quantize=True) -> AttackResult:
    """FGSM (Goodfellow et al.): one signed-gradient step of size ε (L∞)."""
    return _gradient_attack(
        model,
        x,
        y,
        epsilon=epsilon,
        step=epsilon,
        iterations=1,
        norm="linf",
        margin=margin,
        target=target,
        early_stop=False,
        quantize_output=quantize,
    )


def ifgsm(
    model,
    x,
    y,
    *,
    epsilon=0.3,
    step=0.08,
    iterations=10,
    margin=0.0,
    target=None,
    early_stop=True,
    quantize=True,
) -> AttackResult:
    """I-FGSM (Kurakin et al.): signed steps of size `step`, projected on the L∞ ball of radius ε."""
    return _gradient_attack(
        model,
        x,
        y,
        epsilon=epsilon,
        step=step,
        iterations=iterations,
        norm="linf",
        margin=margin,
        target=target,
        early_stop=early_stop,
        quantize_output=quantize,
    )


def pgd2(
    model,
    x,
    y,
    *,
    epsilon=5.0,
    step=3.0,
    iterations=10,
    margin=0.0,
    target=None,
    early_stop=True,
    quantize=True,
) -> AttackResult:
    """PGD₂: L2-normalised gradient steps of size `step`, projected on the L2 ball of radius ε."""
    return _gradient_attack(
        model,
        x,
        y,
        epsilon=epsilon,
        step=step,
        iterations=iterations,
        norm="l2",
        margin=margin,
        target=target,
        early_stop=early_stop,
        quantize_output=quantize,
    )


def smooth_pgd2(
    model,
    x,
    y,
    *,
    epsilon=5.0,
    step=3.0,
    iterations=10,
    alpha=0.95,
    solver="auto",
    cg_iterations=50,
    cg_gradient="autodiff",
    graph=None,
    margin=0.0,
    target=None,
    early_stop=True,
    quantize=True,
) -> AttackResult:
    """sPGD₂ (eq. 12): PGD₂ whose gradient is smoothed by ŝ_α guided by x_o before normalisation.
    ``solver="auto"`` (default): dense ŝ_α up to 64 x 64 pixels, CG above."""
    return _gradient_attack(
        model,
        x,
        y,
        epsilon=epsilon,
        step=step,
        iterations=iterations,
        norm="l2",
        smoothing=_smoothing_options(alpha, solver, cg_iterations, cg_gradient, graph, np.shape(x)),
        margin=margin,
        target=target,
        early_stop=early_stop,
        quantize_output=quantize,
    )


# ------------------------------------------------------------------------ optimality attacks (§2.1, §4.2)
class _TanhPerturbation:
    """C&W: x = (tanh(w) + 1) / 2 stays in [0, 1]; r = x - x_o; penalty ||x - x_o||² (eq. 4)."""

    def __init__(self, x_o):
        self.x_o = x_o

    def initial(self):
        return tf.atanh(tf.clip_by_value(2.0 * self.x_o - 1.0, -1.0 + 1e-6, 1.0 - 1e-6))

    def image_and_perturbation(self, w):
        x = (tf.tanh(w) + 1.0) / 2.0
        return x, x - self.x_o


class _SmoothPerturbation:
    """sC&W: r = ŝ_α(z) (eq. 17), x = c(x_o + r) clipped to [0, 1], penalty ||r||² (eq. 18); z starts at 0."""

    def __init__(self, x_o, smoothing):
        self.x_o = x_o
        self.smoother = Smoother(x_o, **smoothing)

    def initial(self):
        return tf.zeros_like(self.x_o)

    def image_and_perturbation(self, z):
        r = self.smoother(z)
        return tf.clip_by_value(self.x_o + r, 0.0, 1.0), r


def _optimality_attack(
    model,
    x,
    y,
    *,
    smoothing=None,
    margin=0.0,
    learning_rate=0.1,
    initial_const=15.0,
    binary_search_steps=5,
    iterations=100,
    abort_early=False,
    best_iterate="misclassified",
    target=None,
    quantize_output=True,
    beta1=0.9,
    beta2=0.999,
    adam_epsilon=1e-8,
) -> AttackResult:
    """Minimise ||r||² + c·ℓ(f(x(v)), t) over the variable v with Adam (eq. 4 for C&W, eq. 18 for sC&W).

    ``best_iterate`` says which iterates may become the returned image (the least-distortion one among them):
    ``"misclassified"`` — its 8-bit image (raw, if not quantising) is misclassified (or hits the target);
    ``"margin"`` — its raw float image meets the confidence margin m (:func:`meets_margin`), cleverhans' and
    foolbox's rule, so with m > 0 the result is one the authors' code would have kept. Either way the returned
    image is then judged as usual (8-bit, success = misclassified). In both, iterate k is the image *before*
    the k-th Adam update (the first is x_o itself), as in cleverhans and foolbox.
    The early abort (``abort_early``) follows cleverhans' rule per image: at every tenth of the iterations
    (iteration 0 included) an image stops when its loss is above 0.9999 × its loss at the previous check,
    and the iterate that triggered the stop is not considered."""
    x, y, target = _check_inputs(x, y, target)
    if binary_search_steps < 1 or iterations < 1 or not initial_const > 0 or not learning_rate > 0:
        raise ValueError("binary_search_steps, iterations, initial_const and learning_rate must be positive")
    if best_iterate not in BEST_ITERATE_RULES:
        raise ValueError(f"best_iterate={best_iterate!r}: expected one of {BEST_ITERATE_RULES}")
    targeted = target is not None
    smooth_key = tuple(sorted(smoothing.items())) if smoothing else None
    key = (
        "optimality",
        smooth_key,
        float(margin),
        float(learning_rate),
        int(binary_search_steps),
        int(iterations),
        bool(abort_early),
        best_iterate,
        targeted,
        bool(quantize_output),
        beta1,
        beta2,
        adam_epsilon,
    )
    check_every = max(iterations // 10, 1)

    def build(get_model):
        @tf.function
        def run(x_o, goal, originally_correct, initial_const):
            model = get_model()
            param = _SmoothPerturbation(x_o, smoothing) if smoothing else _TanhPerturbation(x_o)
            start = param.initial()
            ones = tf.ones_like(goal, dtype=tf.float32)  # per-image vectors keep goal's static shape
            inf = ones * np.inf

            def one_search_step(c, best_x, best_d, used):
                """Adam from the start point for one value of c per image; returns who succeeded."""

                def body(k, v, m, s, active, prev, succeeded, best_x, best_d, used):
                    with tf.GradientTape(watch_accessed_variables=False) as tape:
                        tape.watch(v)
                        image, r = param.image_and_perturbation(v)
                        logits = logits_of(model, image)
                        per_image = tf.reduce_sum(tf.square(r), [1, 2, 3]) + c * margin_loss(
                            logits, goal, margin, targeted
                        )
                        loss = tf.reduce_sum(per_image)
                    grad = tape.gradient(loss, v)
                    # Early abort (C&W), per image so that an image's result never depends on its batch-mates
                    # (resumed and sharded runs reproduce a single run): every tenth of the run, freeze the
                    # images whose loss no longer decreases. Decided before this iterate counts, as cleverhans.
                    if abort_early:
                        checkpoint = k % check_every == 0
                        active = active & ~(checkpoint & (per_image > 0.9999 * prev))
                        prev = tf.where(checkpoint, per_image, prev)
                    # Keep the least-distortion iterate among those that count.
                    if best_iterate == "margin":
                        candidate = image
                        hit = meets_margin(logits, goal, margin, targeted) & active
                    else:
                        candidate = quantize(image) if quantize_output else image
                        candidate_logits = logits_of(model, candidate) if quantize_output else logits
                        hit = is_adversarial(candidate_logits, goal, targeted) & active
                    dist = l2_norm(candidate - x_o)
                    better = hit & (dist < best_d)
                    best_x = tf.where(_per_image(better), candidate, best_x)
                    best_d = tf.where(better, dist, best_d)
                    succeeded = succeeded | hit
                    # Adam, frozen for inactive images.
                    t = tf.cast(k + 1, tf.float32)
                    m_new = beta1 * m + (1 - beta1) * grad
                    s_new = beta2 * s + (1 - beta2) * tf.square(grad)
                    update = learning_rate * (m_new / (1 - beta1**t)) / (tf.sqrt(s_new / (1 - beta2**t)) + adam_epsilon)
                    on = _per_image(active)
                    v = tf.where(on, v - update, v)
                    m, s = tf.where(on, m_new, m), tf.where(on, s_new, s)
                    used += tf.cast(active, tf.int64)
                    return k + 1, v, m, s, active, prev, succeeded, best_x, best_d, used

                zeros = tf.zeros_like(start)
                state = (
                    tf.constant(0),
                    start,
                    zeros,
                    zeros,
                    originally_correct,
                    inf,  # each image's loss at the last abort check
                    tf.zeros_like(originally_correct),
                    best_x,
                    best_d,
                    used,
                )
                state = tf.while_loop(lambda k, *rest: (k < iterations) & tf.reduce_any(rest[3]), body, state)
                return state[6], state[7], state[8], state[9]

            def search(step, c, lower, upper, best_x, best_d, used):
                succeeded, best_x, best_d, used = one_search_step(c, best_x, best_d, used)
                # Binary search on c = 1/λ per image (C&W): smaller after a success, larger after a failure.
                upper = tf.where(succeeded, tf.minimum(upper, c), upper)
                lower = tf.where(succeeded, lower, tf.maximum(lower, c))
                c = tf.where(upper < LARGE, (lower + upper) / 2.0, c * 10.0)
                return step + 1, c, lower, upper, best_x, best_d, used

            c0 = ones * initial_const
            state = (
                tf.constant(0),
                c0,
                0.0 * ones,
                ones * LARGE,
                x_o,
                inf,
                tf.zeros_like(goal, tf.int64),
            )
            state = tf.while_loop(lambda step, *_: step < binary_search_steps, search, state)
            return state[4], state[6]  # failures keep x_o: "if there is none, the attack fails"

        return run

    traced = _compiled(model, key, build)
    originally_correct = _originally_correct(model, x, y)
    goal = target if targeted else y
    best_x, used = _run_padded(traced, [x, goal, originally_correct], tf.constant(initial_const, tf.float32))
    return _finish(model, x, y, target, best_x, used.numpy(), originally_correct, quantize_output)


def carlini_wagner_l2(
    model,
    x,
    y,
    *,
    margin=1.0,
    learning_rate=0.1,
    initial_const=15.0,
    binary_search_steps=5,
    iterations=100,
    abort_early=False,
    best_iterate="misclassified",
    target=None,
    quantize=True,
) -> AttackResult:
    """C&W L2 (eq. 4): tanh change of variable, Adam, margin m, per-image binary search over c = 1/λ.

    The defaults are the ``strong`` protocol; ``preset(..., protocol="paper")`` gives the authors' (one
    binary-search step, ``best_iterate="margin"``). See :func:`_optimality_attack` for ``best_iterate`` and
    ``abort_early``."""
    return _optimality_attack(
        model,
        x,
        y,
        margin=margin,
        learning_rate=learning_rate,
        initial_const=initial_const,
        binary_search_steps=binary_search_steps,
        iterations=iterations,
        abort_early=abort_early,
        best_iterate=best_iterate,
        target=target,
        quantize_output=quantize,
    )


def smooth_carlini_wagner_l2(
    model,
    x,
    y,
    *,
    alpha=0.95,
    solver="auto",
    cg_iterations=50,
    cg_gradient="autodiff",
    graph=None,
    margin=1.0,
    learning_rate=0.1,
    initial_const=15.0,
    binary_search_steps=5,
    iterations=100,
    abort_early=False,
    best_iterate="misclassified",
    target=None,
    quantize=True,
) -> AttackResult:
    """sC&W (eq. 18): C&W's loop on a latent z with perturbation r = ŝ_α(z) guided by x_o. Options as
    :func:`carlini_wagner_l2`; ``solver="auto"`` (default): dense ŝ_α up to 64 x 64 pixels, CG above."""
    return _optimality_attack(
        model,
        x,
        y,
        smoothing=_smoothing_options(alpha, solver, cg_iterations, cg_gradient, graph, np.shape(x)),
        margin=margin,
        learning_rate=learning_rate,
        initial_const=initial_const,
        binary_search_steps=binary_search_steps,
        iterations=iterations,
        abort_early=abort_early,
        best_iterate=best_iterate,
        target=target,
        quantize_output=quantize,
    )


ATTACKS = {
    "fgsm": fgsm,
    "ifgsm": ifgsm,
    "pgd2": pgd2,
    "carlini_wagner_l2": carlini_wagner_l2,
    "smooth_pgd2": smooth_pgd2,
    "smooth_carlini_wagner_l2": smooth_carlini_wagner_l2,
}


def run_attack(name: str, model, x, y, **params) -> AttackResult:
    """Call attack `name` (one of ATTACKS) with `params`."""
    if name not in ATTACKS:
        raise ValueError(f"attack={name!r}: expected one of {sorted(ATTACKS)}")
    return ATTACKS[name](model, x, y, **params)
