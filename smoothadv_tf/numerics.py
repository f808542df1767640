"""Guarded arithmetic shared by the graph (§3), ŝ_α's CG solve (eq. 8-9) and the attacks (eq. 10-19).

Divisions and square roots whose argument can be 0 are common here: a flat area of the guide image (equal
neighbours, eq. 5), a CG column that has converged or starts at z = 0, a zero gradient, the zero perturbation
every smooth attack starts from (eq. 18). ``tf.where(active, a / n, 0)`` alone is not enough: autodiff still
differentiates the unused branch a / 0 and multiplies its inf by 0, which gives NaN. So the guarded operand is
replaced by 1 where the result is not used, and both the value and the gradient stay finite; these helpers
are that pattern, written once.
"""

from __future__ import annotations

import tensorflow as tf


def safe_div(num: tf.Tensor, den: tf.Tensor, active: tf.Tensor | None = None, otherwise: float = 0.0) -> tf.Tensor:
    """num / den where `active` (default: den > 0), else `otherwise`, with finite gradients on both branches.

    `active` and `den` broadcast against `num` (e.g. a per-image (B, 1, 1, 1) norm dividing (B, H, W, C)
    images); where inactive the denominator is taken as 1, so the discarded quotient is finite."""
    if active is None:
        active = den > 0
    quotient = num / tf.where(active, den, tf.ones_like(den))
    fallback = tf.zeros_like(quotient) if otherwise == 0.0 else tf.cast(otherwise, quotient.dtype)
    return tf.where(active, quotient, fallback)


def safe_sqrt(energy: tf.Tensor) -> tf.Tensor:
    """sqrt(energy) for energy >= 0, with a zero (finite) gradient at 0 instead of sqrt's infinite one.

    Takes squared values (e.g. the squared colour distance of two neighbours, eq. 5); :func:`safe_norm` takes
    the tensor itself."""
    positive = energy > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, energy, tf.ones_like(energy))), tf.zeros_like(energy))


def safe_norm(r: tf.Tensor) -> tf.Tensor:
    """Per-image L2 norm over (H, W, C), (B, H, W, C) -> (B,): 0 for r = 0, with a finite (zero) gradient
    there (the smooth attacks differentiate through ||ŝ_α(z)|| starting from z = 0, eq. 18)."""
    return safe_sqrt(tf.reduce_sum(tf.square(r), axis=[1, 2, 3]))


def l2_norm(x: tf.Tensor) -> tf.Tensor:
    """Per-image L2 norm over (H, W, C), unguarded: for values (distortions, step normalisers), not for a
    gradient through a zero image (use :func:`safe_norm`)."""
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=[1, 2, 3]))
