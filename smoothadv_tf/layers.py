"""Keras 3 layers: image-guided Laplacian smoothing (eq. 9) and the bilateral filter (Appendix A)."""

from __future__ import annotations

import keras

from smoothadv_tf.filters import BilateralFilter
from smoothadv_tf.smoothing import Smoother

__all__ = ["LaplacianSmoothing", "BilateralFilter"]


class LaplacianSmoothing(keras.layers.Layer):
    """``layer([z, x_o])`` -> ŝ_α(z) guided by x_o (eq. 9). Differentiable in z; usable under tf.function.

    Arguments are those of :class:`smoothadv_tf.smoothing.Smoother` (alpha, solver, iterations, gradient,
    tol, neighbors, kernel, sigma, mode).
    """

    def __init__(self, alpha: float = 0.95, **smoother_options):
        super().__init__()
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha={alpha}: must be in [0, 1)")
        self.alpha = alpha
        self.smoother_options = smoother_options

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError("LaplacianSmoothing expects [z, x_o]")
        z, x_o = inputs
        return Smoother(x_o, alpha=self.alpha, **self.smoother_options)(z)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, **self.smoother_options}
