"""The gradient loop (§4.1, eq. 10-12): FGSM, I-FGSM, PGD₂ and sPGD₂.

x ← c(x - n(g)) with g the loss gradient, n the sign (L∞) or the L2 normalisation times the step, and c the
projection on the ε-ball around x_o and on [0, 1] (eq. 10-11). sPGD₂ differs from PGD₂ only in one map: the
gradient is smoothed by ŝ_α guided by x_o before the normalisation (eq. 12).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from smoothadv_tf.attacks.common import (
    AttackResult,
    _per_image,
    _run_attack_loop,
    _smoothing_options,
    checked_attack,
    is_adversarial,
    l2_norm,
    logits_of,
    margin_loss,
    quantize,
)
from smoothadv_tf.attacks.latent import SmoothLatent
from smoothadv_tf.numerics import safe_div
from smoothadv_tf.smoothing import Smoother


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
    target=None,
    early_stop=True,
    quantize_output=True,
) -> AttackResult:
    """Eq. (10)-(12) on a batch (:func:`gradient_loop`), judged and reported (:class:`AttackResult`)."""
    key, build = gradient_loop(
        norm=norm,
        iterations=iterations,
        smoothing=smoothing,
        targeted=target is not None,
        early_stop=early_stop,
        quantize_output=quantize_output,
    )
    return _run_attack_loop(model, x, y, target, quantize_output, key, build, epsilon, step, smoothing=smoothing)


def gradient_loop(*, norm, iterations, smoothing=None, targeted=False, early_stop=True, quantize_output=True):
    """The loop of eq. (10)-(12) as ``(key, build)`` (see :func:`~smoothadv_tf.attacks.common._run_attack_loop`;
    adversarial training calls ``build`` itself, inside its train step): x ← c(x - n(g)) with g the loss
    gradient, optionally smoothed (sPGD₂), n the sign (L∞) or the L2 normalisation times `step`, and c the
    projection on the ε-ball around x_o and on [0,1]. Each image stops once it is adversarial (judged on the
    quantised image) when `early_stop`. Scalars at run time: ε, step.

    The loss is eq. (3) without its positive part and without a margin: these attacks take no margin m (the
    paper sets one for C&W only, §5.2). While the image is classified correctly, (3)'s gradient does not
    depend on m, and each image stops at misclassification (or after its one FGSM step), so m could change
    nothing; its positive part would only zero the gradient of an image already adversarial."""
    smooth_key = tuple(sorted(smoothing.items())) if smoothing else None
    key = (
        "gradient",
        norm,
        smooth_key,
        targeted,
        bool(early_stop),
        bool(quantize_output),
        int(iterations),
    )

    def build(get_model):
        @tf.function
        def run(x_o, goal, originally_correct, setup, epsilon, step):
            model = get_model()
            latent = SmoothLatent.from_smoother(Smoother(x_o, setup=setup, **smoothing)) if smoothing else None

            def body(k, x_adv, done, used):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x_adv)
                    loss = tf.reduce_sum(margin_loss(logits_of(model, x_adv), goal, 0.0, targeted, positive_part=False))
                g = tape.gradient(loss, x_adv)
                if latent is not None:  # eq. (12): smooth the gradient before normalising it
                    g = latent.perturbation(g, stop_gradient=True)
                if norm == "linf":
                    direction = tf.sign(g)
                else:
                    direction = safe_div(g, _per_image(l2_norm(g)))  # a zero gradient: no step
                r = x_adv - step * direction - x_o
                if norm == "linf":
                    r = tf.clip_by_value(r, -epsilon, epsilon)
                else:
                    # the projection on the L2 ε-ball (eq. 11); r = 0 is inside it
                    r = r * tf.minimum(1.0, safe_div(epsilon, _per_image(l2_norm(r)), otherwise=1.0))
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

    return key, build


@checked_attack("fgsm")
def fgsm(model, x, y, *, epsilon: float = 0.3, target: np.ndarray | None = None, quantize: bool = True) -> AttackResult:
    """FGSM (Goodfellow et al.): one signed-gradient step of size ε (L∞)."""
    return _gradient_attack(
        model,
        x,
        y,
        epsilon=epsilon,
        step=epsilon,
        iterations=1,
        norm="linf",
        target=target,
        early_stop=False,
        quantize_output=quantize,
    )


@checked_attack("ifgsm")
def ifgsm(
    model,
    x,
    y,
    *,
    epsilon: float = 0.3,
    step: float = 0.08,
    iterations: int = 10,
    target: np.ndarray | None = None,
    early_stop: bool = True,
    quantize: bool = True,
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
        target=target,
        early_stop=early_stop,
        quantize_output=quantize,
    )


@checked_attack("pgd2")
def pgd2(
    model,
    x,
    y,
    *,
    epsilon: float = 5.0,
    step: float = 3.0,
    iterations: int = 10,
    target: np.ndarray | None = None,
    early_stop: bool = True,
    quantize: bool = True,
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
        target=target,
        early_stop=early_stop,
        quantize_output=quantize,
    )


@checked_attack("smooth_pgd2")
def smooth_pgd2(
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
    target: np.ndarray | None = None,
    early_stop: bool = True,
    quantize: bool = True,
) -> AttackResult:
    """sPGD₂ (eq. 12): PGD₂ whose gradient is smoothed by ŝ_α guided by x_o before normalisation.
    ``solver="auto"`` (default): the exact ŝ_α, dense or Chebyshev by the cost model
    of :func:`smoothadv_tf.smoothing.resolve_solver`; ``"cg"``: the paper's CG (``cg_iterations``, ``cg_gradient``)."""
    return _gradient_attack(
        model,
        x,
        y,
        epsilon=epsilon,
        step=step,
        iterations=iterations,
        norm="l2",
        smoothing=_smoothing_options(
            "smooth_pgd2", np.shape(x), alpha, solver, cg_iterations, cg_gradient, graph, iterations=iterations
        ),
        target=target,
        early_stop=early_stop,
        quantize_output=quantize,
    )
