"""Keras 3 layers: image-guided Laplacian smoothing (eq. 9) and the bilateral filter (Appendix A).

Both are registered as serialisable (``package="smoothadv_tf"``): a model saved with ``model.save("m.keras")``
loads with ``keras.models.load_model`` once this module (or :mod:`smoothadv_tf.filters`) is imported.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from smoothadv_tf.filters import BilateralFilter
from smoothadv_tf.graph import DEFAULT_SIGMA, check_graph_options
from smoothadv_tf.smoothing import Smoother, check_smoother_options

__all__ = ["LaplacianSmoothing", "BilateralFilter"]


def _concrete_guide(x_o) -> tf.Tensor | None:
    """x_o as an eager float32 tensor if its value is known outside any graph being traced, else None.

    An eager tensor or array stays eager even inside ``tf.function`` (a closure's guide, or one passed to the
    layer directly); a constant created inside the traced function has a static value.
    """
    if isinstance(x_o, np.ndarray) or (tf.is_tensor(x_o) and not tf.is_symbolic_tensor(x_o)):
        with tf.init_scope():
            return tf.cast(x_o, tf.float32)  # the same tensor if already float32
    if tf.is_tensor(x_o):
        value = tf.get_static_value(x_o)
        if value is not None:
            with tf.init_scope():
                return tf.constant(value, tf.float32)
    return None


@keras.saving.register_keras_serializable(package="smoothadv_tf")
class LaplacianSmoothing(keras.layers.Layer):
    """``layer([z, x_o])`` -> ŝ_α(z) guided by x_o (eq. 9, with L_α of §3 and s_α of eq. 8). Differentiable
    in z (not in x_o, as :class:`~smoothadv_tf.smoothing.Smoother`); usable under ``tf.function``.

    Arguments are those of :class:`smoothadv_tf.smoothing.Smoother` (alpha, solver, iterations, gradient, tol)
    and of :func:`smoothadv_tf.graph.image_graph` (neighbors, kernel, sigma, mode), plus the Keras layer
    keywords (name, dtype, trainable, ...). The smoothing runs in float32; the output has the layer's compute
    dtype.

    Caching: the graph of eq. (5) and the normaliser s_α(1) of eq. (9) (a full CG solve) depend on x_o only.
    When x_o's value is known outside the traced graph (a NumPy array or eager tensor, also when a
    ``tf.function`` closes over it, or a constant), the layer keeps them for the last such guide and reuses
    them while the guide has the same shape and values (checked by one elementwise comparison, far cheaper
    than the solve). When x_o is a symbolic input (a model input under ``model.predict`` or a ``tf.function``
    argument), its value exists only when the graph runs, so graph and normaliser are ops of that graph and
    are recomputed on every run: to reuse them there, build a ``Smoother`` once outside the function. Behind
    the layer's own cache, a concrete guide's set-up also comes from ``smoothing.SETUP_CACHE`` (per image,
    keyed by its bytes), so alternating between guides does not rebuild them either.
    """

    def __init__(
        self,
        alpha: float = 0.95,
        solver: str = "cg",
        iterations: int = 50,
        gradient: str = "autodiff",
        tol: float = 0.0,
        neighbors: int = 4,
        kernel: str = "laplacian",
        sigma: float = DEFAULT_SIGMA,
        mode: str = "joint",
        **kwargs,
    ):
        check_smoother_options(alpha, solver, iterations, gradient, tol)  # before Keras sets anything up
        super().__init__(**kwargs)
        check_graph_options(neighbors, kernel, sigma, mode)
        self.smoother_options = {
            "alpha": float(alpha),
            "solver": solver,
            "iterations": int(iterations),
            "gradient": gradient,
            "tol": float(tol),
            "neighbors": int(neighbors),
            "kernel": kernel,
            "sigma": float(sigma),
            "mode": mode,
        }
        self.alpha = self.smoother_options["alpha"]
        # A plain list, not an attribute Keras or tf.Module would track and try to save: [guide, Smoother].
        self._cache: list = []

    def smoother(self, x_o) -> Smoother:
        """The Smoother for guide x_o: the cached one if x_o is concrete and equal to the cached guide."""
        guide = _concrete_guide(x_o)
        if guide is None:
            return Smoother(tf.cast(x_o, tf.float32), **self.smoother_options)
        with tf.init_scope():  # eager even while a tf.function is being traced
            if self._cache:
                cached_guide, cached = self._cache
                if cached_guide is guide or (
                    cached_guide.shape == guide.shape and bool(tf.reduce_all(tf.equal(cached_guide, guide)))
                ):
                    return cached
            smoother = Smoother(guide, **self.smoother_options)
            self._cache[:] = [guide, smoother]
            return smoother

    def call(self, inputs):
        """ŝ_α(z) for ``inputs = [z, x_o]`` (eq. 9), with the graph and normaliser of guide x_o (:meth:`smoother`)."""
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError("LaplacianSmoothing expects [z, x_o]")
        z, x_o = inputs
        out = self.smoother(x_o)(tf.cast(z, tf.float32))
        return tf.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        """z's shape: ŝ_α smooths z, pixel by pixel and channel by channel."""
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), **self.smoother_options}
