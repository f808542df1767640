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
        """Logits of the [0, 1] images `x`: the inner model on ``preprocess(x)``, its ``output_key`` output for a
        model returning a dict; ValueError if the class count is not ``num_classes``."""
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
    endpoint: str | None = None,
    output_key: str | None = None,
) -> WrappedModel:
    """Load a local SavedModel directory (e.g. a TF-Hub download) through keras.layers.TFSMLayer and wrap it.

    `endpoint` None takes the ``serving_default`` signature when the SavedModel has one, else the restored
    object itself — its traced ``__call__``, which is all TF-Hub's TF2 SavedModels and a
    ``tf.saved_model.save(module)`` without signatures offer. A name takes that signature or that restored
    function (``serve`` is what ``keras.Model.export`` writes). ValueError names what the SavedModel offers."""
    import os

    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ValueError(f"{path}: not a SavedModel directory (no saved_model.pb)")
    signatures, functions = saved_model_endpoints(path)
    if endpoint is None:
        if "serving_default" in signatures:
            endpoint = "serving_default"
        elif "__call__" in functions:
            endpoint = "__call__"
        else:
            raise ValueError(
                f"{path}: no serving_default signature and the saved object is not callable; pass endpoint= one of "
                f"the signatures {signatures} or functions {functions}"
            )
    elif endpoint not in signatures and endpoint not in functions:
        raise ValueError(f"{path}: no endpoint {endpoint!r}; signatures {signatures}, functions {functions}")
    layer = keras.layers.TFSMLayer(path, call_endpoint=endpoint)
    return wrap(layer, preprocess, num_classes, output_key)


def saved_model_endpoints(path: str) -> tuple[list[str], list[str]]:
    """(signature names, names of the saved object's restored functions) of a SavedModel, read from its
    saved_model.pb without loading it."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        with open(f"{path}/saved_model.pb", "rb") as f:
            proto.ParseFromString(f.read())
    except (OSError, DecodeError) as e:
        raise ValueError(f"{path}/saved_model.pb: cannot read a SavedModel ({type(e).__name__}: {e})") from e
    if not proto.meta_graphs:
        raise ValueError(f"{path}/saved_model.pb: holds no graph")
    graph = proto.meta_graphs[0]
    nodes = graph.object_graph_def.nodes  # empty in a TF1 SavedModel: signatures only
    functions = [
        child.local_name
        for child in (nodes[0].children if nodes else [])
        if nodes[child.node_id].WhichOneof("kind") in ("function", "bare_concrete_function")
    ]
    signatures = [name for name in graph.signature_def if name != "__saved_model_init_op"]  # TF's own, not a model
    return sorted(signatures), sorted(functions)
