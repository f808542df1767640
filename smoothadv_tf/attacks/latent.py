"""The latent smoothing of §4.2 as a building block: z ↦ r = ŝ_α(z), and exact L2 budgets on r by rescaling z.

    s_α(z) = L_α^-1 z                     (eq. 8)
    ŝ_α(z) = diag(s_α(1))^-1 s_α(z)       (eq. 9)
    r = ŝ_α(z),  x = c(x_o + r)           (eq. 17; c clips to [0, 1])

ŝ_α is linear in z (its Jacobian is the constant matrix diag(s_α(1))^-1 L_α^-1, eq. 19), so the gradient of a
loss with respect to z is the gradient with respect to r smoothed by ŝ_αᵀ, which autodiff gives (eq. 19), and
ŝ_α(c·z) = c·ŝ_α(z): an L2 ball or sphere constraint on r is met exactly, per image, by rescaling z
(:meth:`SmoothLatent.project`, :meth:`SmoothLatent.rescale`). With these, any attack on r becomes its smooth
version on z: sC&W (eq. 18) is C&W's loop with r = ŝ_α(z), and an L2 PGD step becomes a step on z whose
perturbation stays "smooth like x_o" at every iterate.

The dense and Chebyshev solves are linear in z; truncated CG (the paper's ImageNet solver) is homogeneous in z as
exactly as float32 rounding allows (every CG scalar is a ratio of inner products), so the rescaling is exact to
float32 precision with every solver.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from smoothadv_tf.attacks.common import _per_image, _smoothing_options
from smoothadv_tf.numerics import safe_div, safe_norm
from smoothadv_tf.smoothing import Smoother


class SmoothLatent:
    """The latent variable z of eq. (17) for a batch of guide images x_o (B, H, W, C) in [0, 1].

    ``perturbation(z)`` is r = ŝ_α(z) guided by x_o (eq. 9), differentiable (eq. 19); ``image(z)`` is
    c(x_o + r); ``project(z, radius)`` and ``rescale(z, radius)`` rescale each image's z so that ||r|| is at
    most / exactly ``radius``. Works eagerly and inside ``tf.function`` (the smooth attacks build one inside
    their traced loops); z has x_o's shape; ``radius`` is a scalar or one value per image.

    Options as the smooth attacks: ``solver="auto"`` is the exact ŝ_α by the dense or the Chebyshev solve,
    whichever :func:`smoothadv_tf.smoothing.resolve_solver` predicts faster (for DEFAULT_APPLICATIONS solves per
    image); ``"cg"`` is the paper's CG, ``cg_iterations`` and ``cg_gradient`` (``"autodiff"`` through the
    iterations, as the paper, or ``"implicit"``) set it; ``graph`` holds :func:`smoothadv_tf.graph.image_graph` options
    (neighbors, kernel, sigma, mode). :meth:`from_smoother` wraps an existing
    :class:`~smoothadv_tf.smoothing.Smoother` instead.
    """

    def __init__(
        self,
        x_o,
        alpha: float = 0.95,
        solver: str = "auto",
        cg_iterations: int = 50,
        cg_gradient: str = "autodiff",
        graph: dict | None = None,
    ):
        shape = x_o.shape if tf.is_tensor(x_o) else np.shape(x_o)
        options = _smoothing_options(None, shape, alpha, solver, cg_iterations, cg_gradient, graph)
        self._use(Smoother(x_o, **options))

    @classmethod
    def from_smoother(cls, smoother: Smoother) -> SmoothLatent:
        """The latent of an existing ŝ_α (its guide is x_o)."""
        latent = cls.__new__(cls)
        latent._use(smoother)
        return latent

    def _use(self, smoother: Smoother) -> None:
        self.smoother = smoother
        self.x_o = smoother.x_o

    def zeros(self) -> tf.Tensor:
        """z = 0, the starting point of eq. (18): r = 0, the image is x_o."""
        return tf.zeros_like(self.x_o)

    def perturbation(self, z, stop_gradient: bool = False) -> tf.Tensor:
        """r = ŝ_α(z) (eq. 9, 17). Its gradient with respect to z is eq. (19) (the transpose smoothing);
        ``stop_gradient=True`` passes none (and the CG solve records nothing: cheaper for a value only)."""
        return self.smoother(z, stop_gradient=stop_gradient)

    def image(self, z) -> tf.Tensor:
        """x = c(x_o + ŝ_α(z)), clipped to [0, 1] (eq. 17-18)."""
        return self.image_and_perturbation(z)[0]

    def image_and_perturbation(self, z) -> tuple[tf.Tensor, tf.Tensor]:
        """(c(x_o + r), r) with r = ŝ_α(z), from one smoothing."""
        r = self.perturbation(z)
        return tf.clip_by_value(self.x_o + r, 0.0, 1.0), r

    def norm(self, z) -> tf.Tensor:
        """(B,) ||ŝ_α(z)||, the L2 norm of each image's perturbation (0, with a finite gradient, for z = 0)."""
        return safe_norm(self.perturbation(z))

    def _scaled(self, z, radius, at_most: bool) -> tf.Tensor:
        z = tf.convert_to_tensor(z, tf.float32)
        norm = self.norm(z)
        radius = tf.broadcast_to(tf.cast(radius, tf.float32), tf.shape(norm))
        scale = safe_div(radius, norm, otherwise=1.0)  # z with ŝ_α(z) = 0 stays as it is: no direction to scale
        if at_most:
            scale = tf.minimum(scale, 1.0)
        return z * _per_image(scale)

    def rescale(self, z, radius) -> tf.Tensor:
        """z scaled per image so that ||ŝ_α(z)|| = radius (ŝ_α is linear, eq. 9); z = 0 stays 0.

        E.g. ``latent.rescale(g, step)`` is a step of L2 size `step` on r in the direction of z-gradient g."""
        return self._scaled(z, radius, at_most=False)

    def project(self, z, radius) -> tf.Tensor:
        """z scaled down per image so that ||ŝ_α(z)|| <= radius, unchanged where it already is: the projection
        of r = ŝ_α(z) on the L2 ball of that radius, done on z (the ball's constraint on r, eq. 10-11)."""
        return self._scaled(z, radius, at_most=True)
