"""Turn any classifier into the project's contract: [0, 1] NHWC images in, logits out."""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf


class WrappedModel(keras.Model):
    """``model(preprocess(x))``; `x` is always a [0, 1] image so distortions are measured in pixel space."""

    def __init__(
        self,
        model: Callable,
        preprocess: Callable | None = None,
        num_classes: int | None = None,
        output_key: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.inner = model
        self.preprocess = preprocess
        self.num_classes = num_classes
        self.output_key = output_key

    def call(self, x, training=False):
        x = tf.convert_to_tensor(x, tf.float32)
        if self.preprocess is not None:
            x = self.preprocess(x)
        out = self.inner(x, training=training) if isinstance(self.inner, keras.Model) else self.inner(x)
        if isinstance(out, dict):
            if self.output_key is None:
                if len(out) != 1:
                    raise ValueError(f"model returns several outputs {sorted(out)}: pass output_key")
                out = next(iter(out.values()))
            else:
                out = out[self.output_key]
        if self.num_classes is not None and out.shape[-1] != self.num_classes:
            raise ValueError(f"model returns {out.shape[-1]} logits, expected num_classes={self.num_classes}")
        return out


def inception_preprocess(x):
    """Slim Inception preprocessing of [0,1] images: [0, 1] -> [-1, 1]."""
    return 2.0 * x - 1.0


def wrap(
    model: Callable,
    preprocess: Callable | None = None,
    num_classes: int | None = None,
    output_key: str | None = None,
) -> WrappedModel:
    """Wrap a Keras model or any callable taking preprocessed images and returning logits (or a dict)."""
    return WrappedModel(model, preprocess, num_classes, output_key)


def from_saved_model(
    path: str,
    preprocess: Callable | None = None,
    num_classes: int | None = None,
    endpoint: str = "serving_default",
    output_key: str | None = None,
) -> WrappedModel:
    """Load a local SavedModel directory (e.g. a TF-Hub download) through keras.layers.TFSMLayer and wrap it."""
    import os

    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a SavedModel directory")
    layer = keras.layers.TFSMLayer(path, call_endpoint=endpoint)
    return wrap(layer, preprocess, num_classes, output_key)
