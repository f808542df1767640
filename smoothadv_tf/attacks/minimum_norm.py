"""L2 attacks whose constraint step is a rescaling, plain and smooth: DDN, FMN and PGD₂ on the latent z.

One loop, :func:`_rescaling_attack`, differing only by two choices:
- the **radius rule**: ``"ddn"`` (Rony et al., CVPR 2019, "Decoupling Direction and Norm": the perturbation sits
  on a sphere of radius ε, ε ← ε(1 ∓ γ) as the iterate is / is not adversarial), ``"fmn"`` (Pintor et al.,
  NeurIPS 2021, "Fast Minimum-norm Adversarial Attacks", L2: a ball of radius ε shrunk by (1 - γ_k) after an
  adversarial iterate, grown by (1 + γ_k) otherwise, none before the first one: see :func:`fmn`) or ``"pgd"``
  (a fixed ball of radius ε, eq. 10-11, stopping at the first adversarial iterate);
- the **perturbation map**: r = δ (the plain attacks) or r = ŝ_α(z) (the smooth ones, eq. 17: the latent
  variable of sC&W, :class:`~smoothadv_tf.attacks.latent.SmoothLatent`).

The smooth attacks take one more choice, ``direction``: z steps along its own gradient ŝ_αᵀ∇ₓℓ (``"latent"``,
eq. 19, the default, as sC&W), so r moves along ŝ_α ŝ_αᵀ∇ₓℓ, smoothed twice; or along the image gradient ∇ₓℓ
(``"image"``), so r moves along ŝ_α∇ₓℓ, smoothed once — eq. 12's direction, with the exact constraint of the
latent construction instead of sPGD₂'s projection in the image. Measured on 1,000 Fashion-MNIST images
(docs/results.md): ``"image"`` costs no more time and lands much closer to the boundary (sDDN D̄ 0.81 vs
1.05), with perturbations still smoother than sC&W's. Its gradient is taken at the clipped image, so it keeps
the components at pixels the clip blocks (the latent direction's chain rule drops them).

Every constraint is an L2 rescaling and ŝ_α is linear, so the smooth versions meet it exactly: each iteration
first scales the variable so that ||r|| obeys the rule (ŝ_α(c·z) = c·ŝ_α(z): the scale comes from the r the
forward pass computes anyway), then steps along the normalised gradient with respect to the variable (for
z: ŝ_αᵀ of the image gradient, eq. 19 — the smooth direction). For r = δ the step is α_k long; for z it is
α_k·||z|| / ||r|| long (r before clipping), the step that keeps its *relative* size α_k / ||r|| the plain
attack's — its effect on ||r|| is only approximately α_k, since ŝ_α shrinks some directions more than others.
From z = 0 (no ratio yet) the first step's r is scaled to length α_0 exactly. Step sizes follow both papers' cosine annealing. An iterate is judged on its 8-bit image (the
dynamics and the kept result alike), and the least-distortion adversarial 8-bit iterate is returned: DDN and
FMN are minimum-norm attacks, so they keep their best iterate as C&W does.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from smoothadv_tf.attacks.common import (
    AttackResult,
    _empty_trace,
    _per_image,
    _run_attack_loop,
    _smoothing_options,
    _trace_steps,
    checked_attack,
    is_adversarial,
    l2_norm,
    logits_of,
    margin_loss,
    quantize,
    recording_iterations,
)
from smoothadv_tf.attacks.latent import SmoothLatent
from smoothadv_tf.numerics import safe_div, safe_norm
from smoothadv_tf.presets import DIRECTIONS
from smoothadv_tf.smoothing import Smoother

RULES = ("ddn", "fmn", "pgd")
_PLAIN_NAMES = {"ddn": "ddn", "fmn": "fmn", "pgd": "pgd2_latent"}  # the attack each rule runs (smooth_ prefixed)


def _rescaling_attack(
    model,
    x,
    y,
    *,
    rule: str,
    iterations: int,
    epsilon: float,
    max_step: float,
    min_step: float,
    gamma: float = 0.05,
    smoothing: dict | None = None,
    direction: str = "latent",
    target=None,
    quantize_output: bool = True,
) -> AttackResult:
    """The loop of this module (see its docstring). `epsilon` is the starting radius (DDN), the fixed radius
    (PGD) or ignored (FMN starts unconstrained); the step size anneals from `max_step` to `min_step` (equal for
    PGD). ``"ddn"`` / ``"fmn"`` run `iterations` steps and keep their least-distortion adversarial iterate
    (none: x_o is returned, the attack failed), as foolbox does; ``"pgd"`` stops each image at its first
    adversarial iterate, judging the image after each of its `iterations` steps (as :func:`~.gradient.pgd2`). The loss
    is eq. (3) without margin, as PGD₂'s (:func:`~smoothadv_tf.attacks.gradient.gradient_loop` says why)."""
    key, build = rescaling_loop(
        rule=rule,
        iterations=iterations,
        gamma=gamma,
        smoothing=smoothing,
        direction=direction,
        targeted=target is not None,
        quantize_output=quantize_output,
        trace=recording_iterations(),
    )
    return _run_attack_loop(
        model, x, y, target, quantize_output, key, build, epsilon, max_step, min_step, smoothing=smoothing
    )


def rescaling_loop(*, rule, iterations, gamma=0.05, smoothing=None, direction="latent", targeted=False,
                   quantize_output=True, early_stop=True, trace=False):  # fmt: skip
    """The loop of :func:`_rescaling_attack` as ``(key, build)`` (see
    :func:`~smoothadv_tf.attacks.common._run_attack_loop`; adversarial training calls ``build`` itself).
    Scalars at run time: ε, the first and the last step size. ``early_stop=False`` (``"pgd"`` only, for
    training): every image takes all `iterations` steps and the last iterate is returned. ``trace=True``: the
    loop also returns its per-image trace (:func:`~smoothadv_tf.attacks.common.record_iterations`)."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: expected one of {RULES}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: expected one of {list(DIRECTIONS)}")
    smooth_key = tuple(sorted(smoothing.items())) if smoothing else None
    on_image = smoothing is None or direction == "image"  # the variable steps along the image gradient
    key = ("rescaling", rule, smooth_key, targeted, bool(quantize_output), int(iterations), gamma)
    key += (on_image, bool(early_stop))
    stops = rule != "pgd" or early_stop  # "pgd" without early stop runs every step and returns the last
    evaluations = iterations + 1 if rule == "pgd" else iterations  # PGD judges the result of its last step too
    if trace:
        key += (("trace", ("smooth_" if smoothing else "") + _PLAIN_NAMES[rule], int(evaluations)),)

    def build(get_model):
        @tf.function
        def run(x_o, goal, originally_correct, setup, epsilon, max_step, min_step):
            model = get_model()
            latent = SmoothLatent.from_smoother(Smoother(x_o, setup=setup, **smoothing)) if smoothing else None
            worst = l2_norm(tf.maximum(x_o, 1.0 - x_o))  # no perturbation in [0, 1] is longer
            ones = tf.ones_like(worst)

            def objective(logits):  # per image, what a step increases
                if rule == "ddn":  # DDN's cross-entropy
                    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(goal, logits)
                    return -ce if targeted else ce
                return -margin_loss(logits, goal, 0.0, targeted, positive_part=False)  # eq. (3), m = 0

            def body(k, v, eps, pending, best_x, best_d, last_x, found, done, used, recorded):
                progress = tf.cast(k, tf.float32) / iterations
                cosine = (1.0 + tf.cos(math.pi * progress)) / 2.0
                step = min_step + (max_step - min_step) * cosine
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(v)
                    raw = latent.perturbation(v) if latent is not None else v
                    # The rule's radius, met exactly by scaling the variable: ŝ_α(c·z) = c·ŝ_α(z).
                    raw_norm = tf.stop_gradient(safe_norm(raw))
                    length = tf.where(pending > 0, pending, raw_norm)  # a first step's length is set here
                    radius = eps * ones if rule == "ddn" else tf.minimum(length, eps)  # sphere / ball
                    scale = safe_div(radius, raw_norm, otherwise=1.0)  # r = 0: nothing to scale yet
                    image = tf.clip_by_value(x_o + raw * _per_image(scale), 0.0, 1.0)
                    logits = logits_of(model, image)
                    gained = objective(logits)
                    total = tf.reduce_sum(gained)
                # the plain step follows the image gradient (as foolbox's); the smooth one the latent's (eq. 19)
                # or, direction="image", the image gradient too: r then moves along ŝ_α of it
                grad = tape.gradient(total, image if on_image else v)
                v_now = image - x_o if latent is None else v * _per_image(scale)  # plain δ is kept clipped
                r_length = raw_norm * scale  # ||r|| before clipping: the length the latent variable controls
                judged = quantize(image) if quantize_output else image
                judged_logits = logits_of(model, judged) if quantize_output else logits  # unquantised: the same image
                adversarial = is_adversarial(judged_logits, goal, targeted) & originally_correct
                distortion = l2_norm(judged - x_o)
                better = adversarial & (distortion < best_d) & ~done
                best_x = tf.where(_per_image(better), judged, best_x)
                best_d = tf.where(better, distortion, best_d)
                last_x = tf.where(_per_image(done), last_x, image)
                found = found | adversarial
                if trace:  # record_iterations: what the step descends, -objective
                    recorded = _trace_steps(recorded, k, ~done, -gained, distortion, adversarial)
                if rule == "ddn":  # ε ← ε(1 - γ) after an adversarial iterate, ε(1 + γ) otherwise
                    new_eps = eps * tf.where(adversarial, 1.0 - gamma, 1.0 + gamma)
                elif rule == "fmn":  # γ anneals to 0.001; no ball before the first success (see fmn())
                    gamma_k = 0.001 + (gamma - 0.001) * cosine
                    new_eps = tf.where(
                        adversarial,
                        tf.minimum(eps * (1.0 - gamma_k), best_d),
                        tf.where(found, eps * (1.0 + gamma_k), np.inf * ones),
                    )
                else:
                    new_eps = eps
                new_eps = tf.minimum(new_eps, worst) if rule != "pgd" else new_eps
                # A step of L2 size `step` on r's scale along the normalised gradient `grad` (for z by default the
                # image gradient smoothed by ŝ_αᵀ, eq. 19); from z = 0 its length is set by the next scaling.
                unit = safe_div(grad, _per_image(l2_norm(grad)))  # a zero gradient: no step
                has_r = r_length > 0
                ratio = safe_div(l2_norm(v_now), r_length, otherwise=1.0) if latent else ones
                v_next = v_now + _per_image(step * ratio) * unit
                pending_next = tf.where(has_r, tf.zeros_like(step * ones), step * ones)
                freeze = done | (adversarial if rule == "pgd" and early_stop else tf.zeros_like(done))
                used = used + tf.cast(~freeze & (k < iterations), tf.int64)
                v = tf.where(_per_image(freeze), v, v_next)
                eps = tf.where(freeze, eps, new_eps)
                pending = tf.where(freeze, pending, pending_next)
                return k + 1, v, eps, pending, best_x, best_d, last_x, found, freeze, used, recorded

            start = latent.zeros() if latent is not None else tf.zeros_like(x_o)
            state = (
                tf.constant(0),
                start,
                epsilon * ones if rule != "fmn" else np.inf * ones,
                tf.zeros_like(worst),
                x_o,
                np.inf * ones,
                x_o,
                tf.zeros_like(originally_correct),
                ~originally_correct,  # misclassified images are reported, not attacked
                tf.zeros_like(goal),
                _empty_trace(goal, evaluations) if trace else (),
            )
            state = tf.while_loop(lambda k, *rest: (k < evaluations) & ~tf.reduce_all(rest[7]), body, state)
            _, _, _, _, best_x, _, last_x, found, _, used, recorded = state
            if not stops:
                result = last_x
            else:
                failed = last_x if rule == "pgd" else x_o  # PGD returns where it stopped; DDN / FMN "fail": x_o
                result = tf.where(_per_image(found), best_x, failed)
            return (result, used, recorded) if trace else (result, used)

        return run

    return key, build


@checked_attack("ddn")
def ddn(
    model,
    x,
    y,
    *,
    iterations: int = 100,
    init_epsilon: float = 1.0,
    gamma: float = 0.05,
    target: np.ndarray | None = None,
    quantize: bool = True,
) -> AttackResult:
    """DDN (Rony et al., CVPR 2019): steps of cosine-annealed size (1 → 0.01) along the normalised
    cross-entropy gradient, the perturbation projected on a sphere of radius ε that shrinks by (1 - γ) after an
    adversarial iterate and grows by (1 + γ) otherwise; the least-distortion adversarial 8-bit iterate."""
    return _rescaling_attack(
        model, x, y, rule="ddn", iterations=iterations, epsilon=init_epsilon, max_step=1.0, min_step=0.01,
        gamma=gamma, target=target, quantize_output=quantize,
    )  # fmt: skip


@checked_attack("smooth_ddn")
def smooth_ddn(
    model,
    x,
    y,
    *,
    iterations: int = 100,
    init_epsilon: float = 1.0,
    gamma: float = 0.05,
    alpha: float = 0.95,
    solver: str = "auto",
    cg_iterations: int = 50,
    cg_gradient: str = "autodiff",
    graph: dict | None = None,
    direction: str = "latent",
    target: np.ndarray | None = None,
    quantize: bool = True,
) -> AttackResult:
    """DDN on the latent z with r = ŝ_α(z) (eq. 17): the same steps and sphere, met exactly by rescaling z;
    z steps along ŝ_αᵀ∇ₓℓ (`direction="latent"`, eq. 19) or ∇ₓℓ (`"image"`; see the module docstring)."""
    return _rescaling_attack(
        model, x, y, rule="ddn", iterations=iterations, epsilon=init_epsilon, max_step=1.0, min_step=0.01,
        gamma=gamma, smoothing=_smoothing_options("smooth_ddn", np.shape(x), alpha, solver, cg_iterations, cg_gradient, graph, iterations=iterations),
        direction=direction, target=target, quantize_output=quantize,
    )  # fmt: skip


@checked_attack("fmn")
def fmn(
    model,
    x,
    y,
    *,
    iterations: int = 100,
    max_step: float = 1.0,
    min_step: float = 0.01,
    gamma: float = 0.05,
    target: np.ndarray | None = None,
    quantize: bool = True,
) -> AttackResult:
    """FMN, L2 (Pintor et al., NeurIPS 2021): steps of cosine-annealed size (max_step → min_step) along the
    normalised logit-difference gradient inside an L2 ball of radius ε, shrunk by (1 - γ_k) after an
    adversarial iterate (to at most the best norm so far) and grown by (1 + γ_k) otherwise, γ_k annealed from
    γ to 0.001.

    Before the first adversarial iterate there is no ball. The paper sets ε to the per-image linear estimate
    of the boundary, ||δ|| + |loss| / ||∇loss||; with that ball enforced the iterates stay on the inner side
    of the boundary (measured on C4, 100 steps: P_suc 0.19 — foolbox 3.3.4's L2FMNAttack gives the same 0.19
    once its projection is fixed, and so did this loop with that rule). Neither reference runs that rule:
    foolbox's ``L2FMNAttack.project`` scales by min(1, ||x|| / ||x||) = 1, so it never projects at all, and
    the authors' code divides |Σ_batch loss| by each image's gradient norm, a radius that grows with the
    batch size. No ball until the first success is what both do in effect, per image (docs/results.md)."""
    return _rescaling_attack(
        model, x, y, rule="fmn", iterations=iterations, epsilon=1.0, max_step=max_step, min_step=min_step,
        gamma=gamma, target=target, quantize_output=quantize,
    )  # fmt: skip


@checked_attack("smooth_fmn")
def smooth_fmn(
    model,
    x,
    y,
    *,
    iterations: int = 100,
    max_step: float = 1.0,
    min_step: float = 0.01,
    gamma: float = 0.05,
    alpha: float = 0.95,
    solver: str = "auto",
    cg_iterations: int = 50,
    cg_gradient: str = "autodiff",
    graph: dict | None = None,
    direction: str = "latent",
    target: np.ndarray | None = None,
    quantize: bool = True,
) -> AttackResult:
    """FMN on the latent z with r = ŝ_α(z) (eq. 17): the same steps and ball, met exactly by rescaling z;
    z steps along ŝ_αᵀ∇ₓℓ (`direction="latent"`, eq. 19) or ∇ₓℓ (`"image"`; see the module docstring)."""
    return _rescaling_attack(
        model, x, y, rule="fmn", iterations=iterations, epsilon=1.0, max_step=max_step, min_step=min_step,
        gamma=gamma, smoothing=_smoothing_options("smooth_fmn", np.shape(x), alpha, solver, cg_iterations, cg_gradient, graph, iterations=iterations),
        direction=direction, target=target, quantize_output=quantize,
    )  # fmt: skip


@checked_attack("smooth_pgd2_latent")
def smooth_pgd2_latent(
    model,
    x,
    y,
    *,
    epsilon: float = 5.0,
    step: float = 3.0,
    iterations: int = 10,
    alpha: float = 0.95,
    solver: str = "auto",
    cg_iterations: int = 50,
    cg_gradient: str = "autodiff",
    graph: dict | None = None,
    direction: str = "latent",
    target: np.ndarray | None = None,
    quantize: bool = True,
) -> AttackResult:
    """PGD₂ (eq. 10-11) on the latent z with r = ŝ_α(z) (eq. 17) and the exact projection of r on the ε-ball
    (by rescaling z), instead of sPGD₂'s smoothed gradient step on x (eq. 12); stops each image at its first
    adversarial iterate, as PGD₂; z steps along ŝ_αᵀ∇ₓℓ (`direction="latent"`) or ∇ₓℓ (`"image"`)."""
    return _rescaling_attack(
        model, x, y, rule="pgd", iterations=iterations, epsilon=epsilon, max_step=step, min_step=step,
        smoothing=_smoothing_options("smooth_pgd2_latent", np.shape(x), alpha, solver, cg_iterations, cg_gradient, graph, iterations=iterations),
        direction=direction, target=target, quantize_output=quantize,
    )  # fmt: skip
