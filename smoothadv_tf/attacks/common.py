"""What every attack shares: the result type, the judgement, the margin loss, and the traced-loop cache.

Every attack takes a model (a Keras model or any callable mapping [0, 1] NHWC images to logits), images x in
[0, 1] and their true labels y, works on the whole batch at once (each image keeps its own state), and returns
an :class:`AttackResult`. All attacks are untargeted with the margin loss of eq. (3) unless `target` labels are
given. Success and distortion are judged on the 8-bit-quantised adversarial image (what a PNG stores; the
authors' code did the same) unless ``quantize=False``; then x itself is rounded to 8 bits on entry, so that the
attack starts from, is judged "originally correct" on, and measures its distortion against the image a PNG
would store (float images, e.g. resized photos, are legitimate input; without this, rounding noise counts as
distortion). Distortion is the L2 norm on [0, 1] pixels.

Inputs are checked before any loop is traced (:func:`checked_attack`, :func:`_prepare`): options as
:func:`smoothadv_tf.presets.check_params`, labels in [0, classes) of the model's output, NHWC images, targets
that differ from the labels; a model whose outputs look like probabilities is warned about once.

Each attack loop runs in one `tf.function` (binary search included): no host round trip per step. The traced
loops are cached per model (:func:`_compiled`) and called on padded batches (:func:`_run_padded`); called
inside a ``tf.distribute`` strategy's scope, each loop runs per replica on its share of the batch. One
function, :func:`_run_attack_loop`, runs these steps for all three families (gradient, optimality,
minimum-norm): each defines only its cache key, its traced loop and its run-time scalars.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import warnings
import weakref
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from smoothadv_tf.graph import check_graph_options, image_graph
from smoothadv_tf.numerics import l2_norm  # the distortion measure; attacks.l2_norm, as before
from smoothadv_tf.presets import OPTIONS, check_params, smoothing_applications
from smoothadv_tf.smoothing import DEFAULT_APPLICATIONS, resolve_solver, setup_arrays


# ----------------------------------------------------------------------------------------------- results
@dataclass
class AttackResult:
    """Per-image outcome. `adversarial` is the (quantised) image that was judged.

    Each image is in one of three states (`status`): attacked and succeeded (`success`), attacked and failed
    (`attacked & ~success`), or not attacked because the model already misclassified it (`~attacked`; such an
    image is returned unchanged and never counts as a success). `p_suc` and `mean_distortion` are eq. (20)
    over the attacked images. `original` is the image the attack started from and measured against: x itself,
    or with ``quantize=True`` (the default) x rounded to 8 bits, which is also what "originally correct" judged."""

    adversarial: np.ndarray  # (B, H, W, C) in [0, 1]
    success: np.ndarray  # (B,) bool: attacked, and prediction != label (or == target)
    distortion: np.ndarray  # (B,) L2 distance to x on [0, 1] pixels
    prediction: np.ndarray  # (B,) int: the model's prediction on `adversarial`
    iterations: np.ndarray  # (B,) int: gradient steps spent on the image
    originally_correct: np.ndarray  # (B,) bool: the model classified `original` correctly (only these are attacked)
    original: np.ndarray  # (B, H, W, C): x, rounded to 8 bits when quantising (distortion is measured from it)

    def __len__(self):
        return len(self.success)

    @property
    def attacked(self) -> np.ndarray:
        """(B,) bool: the images the attack ran on, those the model classified correctly (§5.1)."""
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
    """Per image: the prediction differs from `labels` (untargeted) or equals them (targeted: the targets)."""
    pred = tf.argmax(logits, -1, output_type=labels.dtype)
    return tf.equal(pred, labels) if targeted else tf.not_equal(pred, labels)


def meets_margin(logits: tf.Tensor, labels: tf.Tensor, margin: float, targeted: bool) -> tf.Tensor:
    """cleverhans' (and foolbox's) C&W success test: the decision still holds with the label's logit raised by
    the margin m (untargeted) or the target's lowered by m (targeted), i.e. eq. (3)'s margin is met."""
    shift = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype) * tf.cast(margin, logits.dtype)
    return is_adversarial(logits - shift if targeted else logits + shift, labels, targeted)


def _per_image(v: tf.Tensor) -> tf.Tensor:
    return v[:, None, None, None]


class ProbabilityOutputWarning(UserWarning):
    """The model's outputs look like probabilities (non-negative, rows summing to 1), not logits."""


# Models already warned about (weakly held; models that cannot be, by id).
_WARNED: weakref.WeakSet = weakref.WeakSet()
_WARNED_IDS: set = set()


def checked_attack(name: str):
    """Decorate attack `name`: every call checks its options (defaults included) with
    :func:`smoothadv_tf.presets.check_params` before any work, so a direct call refuses what the scripts
    refuse, with the same one-line ValueError. The signature is kept (``inspect.signature`` sees it), and is
    where :data:`smoothadv_tf.presets.OPTIONS` is read from: the decorated function's keyword-only parameters,
    each annotated (``epsilon: float = 0.3``; bool, int, float and str are the checked scalars)."""

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def attack(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)  # an unknown keyword is Python's own TypeError
            bound.apply_defaults()
            check_params(name, {k: v for k, v in bound.arguments.items() if k in OPTIONS[name]})
            return fn(*args, **kwargs)

        return attack

    return decorate


def _check_inputs(x, y, target):
    """Shapes, range and target != label: everything that needs no model."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"x: expected (B, H, W, C) images, got shape {x.shape}")
    if y.shape != (len(x),) or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise ValueError(f"y: expected {len(x)} integer labels, got shape {y.shape} ({y.dtype})")
    y = y.astype(np.int64)
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise ValueError("x: images must be finite and in [0, 1]")
    if target is not None:
        target = np.asarray(target)
        if target.shape != y.shape or not (np.issubdtype(target.dtype, np.integer) or target.size == 0):
            raise ValueError(f"target: expected {len(x)} integer labels, got shape {target.shape} ({target.dtype})")
        target = target.astype(np.int64)
        same = np.flatnonzero(target == y)
        if len(same):  # success would be the clean image itself, at D = 0
            raise ValueError(
                f"target: equals the label y for {len(same)} image(s) (indices {same[:10].tolist()}); "
                "a targeted attack needs target != label"
            )
    return x, y, target


def _declared_image_shape(model):
    """(H, W, C) the model declares for its input (None where free), or None if it declares none: a Keras
    model's ``input_shape``, or that of the model a wrapper holds as ``.inner`` (models.wrap)."""
    for m in (model, getattr(model, "inner", None)):
        try:
            shape = getattr(m, "input_shape", None)
        except Exception:  # a probe only: Keras raises for unbuilt models, restored objects may raise anything
            shape = None
        if isinstance(shape, tuple) and len(shape) == 4 and all(d is None or isinstance(d, int) for d in shape):
            return shape[1:]
    return None


def _check_layout(model, x) -> None:
    """Refuse NCHW images: the attacks, ŝ_α and the models here take NHWC. Decided from the model's declared
    input shape where it has one (only when x does not fit it and its NCHW reading does); else when the
    channel axis of NCHW holds 1 or 3 and the last axis is too long to be channels."""
    shape = tuple(x.shape[1:])
    as_nhwc = (shape[1], shape[2], shape[0])  # what x would be if it were NCHW
    declared = _declared_image_shape(model)
    fits = lambda s: all(d is None or d == e for d, e in zip(declared, s))  # noqa: E731
    if declared is not None:
        looks_nchw = not fits(shape) and fits(as_nhwc)
    else:
        looks_nchw = shape[0] in (1, 3) and shape[2] > 4
    if looks_nchw:
        raise ValueError(
            f"x: shape {x.shape} looks like NCHW (batch, channels, height, width); the attacks take NHWC "
            f"(batch, height, width, channels): pass np.transpose(x, (0, 2, 3, 1)), shape {(len(x), *as_nhwc)}"
        )


def outputs_probabilities(outputs) -> bool:
    """True for outputs that are non-negative with rows summing to 1: probabilities, not logits."""
    outputs = np.asarray(outputs, np.float64)
    return outputs.size > 0 and outputs.min() >= 0 and bool(np.allclose(outputs.sum(-1), 1.0, atol=1e-3))


def _warn_if_probabilities(model, logits: np.ndarray) -> None:
    """Once per model: outputs that are probabilities (:func:`outputs_probabilities`) make the margin loss of
    eq. (3) weaker than on logits (e.g. C&W's margin m = 1 cannot be met)."""
    if not outputs_probabilities(logits):
        return
    try:
        if model in _WARNED:
            return
        _WARNED.add(model)
    except TypeError:
        if id(model) in _WARNED_IDS:
            return
        _WARNED_IDS.add(id(model))
    warnings.warn(
        f"{getattr(model, 'name', type(model).__name__)}: its outputs look like probabilities (non-negative, "
        "rows summing to 1); the attacks' margin loss (eq. 3) wants logits. Remove the final softmax (e.g. "
        "keras.applications models with classifier_activation=None; smoothadv_tf.models.keras_application "
        "already returns logits)",
        ProbabilityOutputWarning,
        stacklevel=5,  # the public attack's frame (attack -> its loop -> _run_attack_loop -> _prepare -> here)
    )


def _prepare(model, x, y, target, quantize_input: bool):
    """Check the inputs before any loop is traced, round x to 8 bits if quantising (the image a PNG stores is
    what the attack starts from and is measured against), and judge it with one forward pass, which also gives
    the class count the labels must lie in. Returns (x, y, target, originally_correct)."""
    x, y, target = _check_inputs(x, y, target)
    _check_layout(model, x)
    if quantize_input:
        x = quantize(tf.constant(x)).numpy()
    logits = logits_of(model, tf.constant(x)).numpy()
    classes = logits.shape[-1]
    for name, labels in (("y", y), ("target", target)):
        if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= classes):
            bad = np.flatnonzero((labels < 0) | (labels >= classes))
            raise ValueError(
                f"{name}: labels must be in [0, {classes}) (the model outputs {classes} classes); "
                f"got {labels[bad[0]]} at index {bad[0]} ({len(bad)} out of range)"
            )
    _warn_if_probabilities(model, logits)
    return x, y, target, np.argmax(logits, -1) == y


def _finish(model, x, y, target, x_adv, iterations, originally_correct, quantize_output) -> AttackResult:
    """Judge the final images: quantise, predict, measure distortion from x (one place for all attacks)."""
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
        original=x,
    )


# ------------------------------------------------------------------------------- per-iteration traces
TRACED_FIELDS = ("loss", "distortion", "adversarial")


@dataclass
class IterationTrace:
    """What an iterative attack's batch did at every iteration (:func:`record_iterations`): the means over
    its attacked (originally correct) images still iterating (all of them, unless an image stops early: C&W's
    ``abort_early``, PGD₂ on z at its first success) of

    - ``loss``: what the attack minimises — C&W / sC&W: ||r||² + c·ℓ (eq. 4 / 18; ||r|| + c·ℓ with
      ``distortion_penalty="norm"``); DDN / sDDN: minus the cross-entropy (plus it, targeted); FMN / sFMN: the
      margin of eq. (3) without its positive part, m = 0;
    - ``distortion``: the L2 distance on [0, 1] pixels of the iterate to x_o (C&W: before quantisation; DDN /
      FMN: of the 8-bit image they judge);
    - ``adversarial``: the share of those images whose iterate passes the attack's own success test (C&W:
      its ``best_iterate`` rule; DDN / FMN: the 8-bit image misclassified).

    Entry k is iteration k of the whole run: for C&W, binary-search step k // ``iterations_per_step``,
    iteration k % ``iterations_per_step`` (the iterate before the k-th Adam update, as the loop judges it).
    Iterations no image reached (every image stopped) are left out: ``steps`` holds the k of each entry."""

    attack: str
    steps: np.ndarray  # (T,) int: the iteration index of each entry
    loss: np.ndarray  # (T,)
    distortion: np.ndarray  # (T,)
    adversarial: np.ndarray  # (T,) in [0, 1]
    iterations_per_step: int
    images: int  # attacked images the means are over


_RECORDING: contextvars.ContextVar = contextvars.ContextVar("smoothadv_tf_iteration_traces", default=None)


@contextlib.contextmanager
def record_iterations():
    """Within this block, the iterative minimisation attacks (C&W, sC&W, DDN, sDDN, FMN, sFMN, and PGD₂ on the
    smooth latent z, which shares their loop) record their batch-mean loss, distortion and share adversarial
    at every iteration (:class:`IterationTrace`), appended to the yielded list, one per attack call::

        with attacks.record_iterations() as traces:
            attacks.smooth_carlini_wagner_l2(model, x, y)
        traces[0].loss  # (100,) under the paper protocol

    The values are computed inside the traced loop and returned with its result (no host round trip per
    iteration); the loop with the recording is traced apart from the usual one, which stays as it was
    (scripts/bench_tracing.py measures both). The attack's results are the same either way."""
    traces: list[IterationTrace] = []
    token = _RECORDING.set(traces)
    try:
        yield traces
    finally:
        _RECORDING.reset(token)


def recording_iterations() -> bool:
    """True inside :func:`record_iterations`: the attack loops then trace the variant that records."""
    return _RECORDING.get() is not None


def _trace_steps(trace, position, running, loss, distortion, adversarial):
    """Write one iteration's per-image values into the loop's (B, T, 3) trace at column `position`: NaN for
    the images not `running` (stopped early), so that the means are over the images still iterating."""
    values = tf.stack([loss, distortion, tf.cast(adversarial, tf.float32)], -1)  # (B, 3)
    values = tf.where(running[:, None], values, np.float32(np.nan))
    column = tf.equal(tf.range(tf.shape(trace)[1]), position)[None, :, None]
    return tf.where(column, values[:, None, :], trace)


def _empty_trace(batch_like, steps: int):
    """The (B, steps, 3) trace a recording loop starts from: NaN where no iteration wrote."""
    return tf.fill(tf.stack([tf.shape(batch_like)[0], steps, len(TRACED_FIELDS)]), np.float32(np.nan))


def _keep_trace(attack: str, per_image: np.ndarray, attacked: np.ndarray, iterations_per_step: int) -> None:
    """Average a loop's (B, T, 3) per-image trace over the attacked images; append it to the recording."""
    rows = np.asarray(per_image, np.float64)[np.asarray(attacked, bool)]
    counts = np.isfinite(rows).sum(axis=0)  # images still iterating; 0: an iteration no image reached
    means = np.where(counts > 0, np.nansum(rows, axis=0) / np.maximum(counts, 1), np.nan)
    reached = np.flatnonzero(np.all(np.isfinite(means), axis=-1))
    _RECORDING.get().append(
        IterationTrace(
            attack=attack,
            steps=reached,
            **{name: means[reached, k] for k, name in enumerate(TRACED_FIELDS)},
            iterations_per_step=iterations_per_step,
            images=len(rows),
        )
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


def _run_padded(traced: _Traced, batch: list[np.ndarray], *scalars, setup: tuple = ()):
    """Call a traced loop on per-image arrays (first axis = batch; the third must be `originally_correct`,
    padded with False so that padding images are not attacked), padding to a traced size; unpad the outputs.
    `setup` holds more per-image arrays (a smoothing set-up), padded and split alike and passed to the loop
    as one tuple after the batch.

    Inside a ``tf.distribute`` strategy's scope (e.g. ``MirroredStrategy``), the batch is split into equal
    consecutive shares, one per replica, each attacked by the same loop on its device inside ``strategy.run``;
    the outputs are concatenated back in order. Every image keeps its own state, so results do not depend on
    how the batch is split (tested: bitwise equal records on 1 and 2 devices)."""
    n = len(batch[0])
    batch = [*batch, *setup]
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

    def loop_args(arrays):  # (x_o, goal, originally_correct, (set-up arrays))
        return (*arrays[:3], tuple(arrays[3:]))

    if not distributed:
        outputs = traced.fn(*loop_args([tf.constant(a) for a in batch]), *scalars)
    else:
        shares = [
            strategy.experimental_distribute_values_from_function(
                lambda ctx, a=a: tf.constant(a[ctx.replica_id_in_sync_group * share :][:share])
            )
            for a in batch
        ]
        outputs = traced.fn(loop_args(shares), scalars)
        outputs = [tf.concat(strategy.experimental_local_results(o), 0) for o in outputs]
    return [o[:n] for o in outputs]


def _run_attack_loop(
    model, x, y, target, quantize_output: bool, key: tuple, build, *scalars, smoothing: dict | None = None
) -> AttackResult:
    """The pipeline every attack loop runs: check the inputs and judge x (:func:`_prepare`), fetch or trace
    the loop of `model` for static configuration `key` (:func:`_compiled`), run it on the padded batch
    (:func:`_run_padded`) and judge its images (:func:`_finish`). An attack family supplies only `key`,
    `build` and its run-time `scalars`; a smooth attack also its Smoother options `smoothing`, whose set-up
    (graph, s_α(1), factorisation) is taken per image from :data:`smoothadv_tf.smoothing.SETUP_CACHE` (built
    once per image and options, reused by later calls on the same images: an ε sweep, a rerun).

    ``build(get_model)`` returns the traced loop ``run(x_o, goal, originally_correct, setup, *scalars) ->
    (x_adv, used)``: x_o the (rounded) images, goal the target labels if given else the true ones,
    originally_correct the images to attack (the others, and the padding, must come back unchanged), setup
    the :class:`~smoothadv_tf.smoothing.SmoothingSetup` tensors of x_o (an empty tuple without smoothing), one
    float32 scalar tensor per entry of `scalars` (values that may change between calls without a retrace,
    e.g. ε); it returns the images to judge and the gradient steps spent on each. Everything else the loop
    depends on must be in `key`, which also says whether it is targeted and quantised. A loop traced inside
    :func:`record_iterations` returns a third output, its per-image (B, T, 3) trace, and its key ends with
    ``("trace", attack name, iterations per binary-search step)``."""
    x, y, target, originally_correct = _prepare(model, x, y, target, quantize_output)
    traced = _compiled(model, key, build)
    goal = target if target is not None else y
    scalars = [tf.constant(value, tf.float32) for value in scalars]
    setup = ()
    if smoothing:
        options = {k: v for k, v in smoothing.items() if k != "gradient"}
        setup = setup_arrays(x, **options)
    x_adv, used, *trace = _run_padded(traced, [x, goal, originally_correct], *scalars, setup=setup)
    if trace:  # a loop traced inside record_iterations(): key ends with ("trace", attack, iterations per step)
        _keep_trace(key[-1][1], trace[0].numpy(), originally_correct, key[-1][2])
    return _finish(model, x, y, target, x_adv, used.numpy(), originally_correct, quantize_output)


def _smoothing_options(attack, image_shape, alpha, solver, cg_iterations, cg_gradient, graph, **budget) -> dict:
    """Smoother options of smooth attack `attack`. ``solver="auto"`` is resolved here, for the batch's image
    shape and the solves of ŝ_α per image the attack makes with its `budget` (iterations, binary-search steps:
    :func:`smoothadv_tf.presets.smoothing_applications`; DEFAULT_APPLICATIONS for attack None), by
    :func:`smoothadv_tf.smoothing.resolve_solver`: the exact ŝ_α (to AUTO_TOLERANCE) by the dense
    factorisation or Chebyshev iteration, whichever its measured cost model predicts faster."""
    _check_graph(graph)
    if solver == "auto":
        mode = (graph or {}).get("mode", "joint")
        applications = DEFAULT_APPLICATIONS if attack is None else smoothing_applications(attack, budget)
        solver, cg_iterations = resolve_solver(tuple(image_shape), alpha, applications, mode)
    return {
        "alpha": alpha,
        "solver": solver,
        "iterations": cg_iterations,
        "gradient": cg_gradient,
        **(graph or {}),
    }


def _check_graph(graph) -> None:
    """The smooth attacks' `graph` options (image_graph's keywords), checked before tracing."""
    if graph is None:
        return
    if not isinstance(graph, dict):
        raise ValueError(f"graph={graph!r}: expected a dict of image_graph options (neighbors, kernel, sigma, mode)")
    try:
        bound = inspect.signature(image_graph).bind(None, **graph)
    except TypeError:
        known = list(inspect.signature(image_graph).parameters)[1:]
        raise ValueError(f"graph={graph!r}: expected options among {known}") from None
    bound.apply_defaults()
    check_graph_options(**{k: v for k, v in bound.arguments.items() if k != "x_o"})
