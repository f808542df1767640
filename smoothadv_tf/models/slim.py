"""Keras 3 models with the structure and numerics of TF-slim's InceptionV3 and ResNetV2-50 (paper §5.2),
and a loader for the original slim checkpoints (V1 and V2 formats).

The slim variable scopes *are* the checkpoint names, so every layer records the scope it stands for
(``model.slim_variables``: checkpoint name -> Keras variable) and :func:`load_slim_checkpoint` fills them.
Slim numerics kept here: batch norm without scale and ε = 0.001 for Inception, with scale and ε = 1e-5 for
ResNet; TF 'SAME'/'VALID' padding; ResNet's ``conv2d_same`` explicit padding for strided convolutions;
average pooling that counts only in-image pixels. AuxLogits and dropout do nothing at inference and are
left out.

Both networks take [0, 1] images and apply slim's Inception preprocessing ([0,1] -> [-1,1]) inside, and
return 1001 logits (class 0 = background).
"""

from __future__ import annotations

import re

import keras
import numpy as np
import tensorflow as tf

from smoothadv_tf.errors import InputError
from smoothadv_tf.models.wrap import WrappedModel, inception_preprocess

CHECKPOINTS = {
    "inception_v3": "inception_v3.ckpt",
    "adv_inception_v3": "adv_inception_v3.ckpt",
    "ens3_adv_inception_v3": "ens3_adv_inception_v3.ckpt",
    "ens4_adv_inception_v3": "ens4_adv_inception_v3.ckpt",
    "resnet_v2_50": "resnet_v2_50.ckpt",
}
# Checkpoint tensors known not to matter at inference; everything else must be consumed.
IGNORED = (
    r"(^|/)AuxLogits/",
    r"^global_step$",
    r"/(RMSProp|RMSProp_1|Momentum|Adam|Adam_1|ExponentialMovingAverage)$",
    r"^(beta1_power|beta2_power)$",
)


class CheckpointError(InputError):
    """A checkpoint that cannot be used: unreadable, missing / unexpected / mis-shaped or non-finite tensors."""


class _Builder:
    """Functional-API helpers that remember which checkpoint name each Keras variable stands for."""

    def __init__(self, bn_epsilon: float, bn_scale: bool):
        self.bn_epsilon, self.bn_scale = bn_epsilon, bn_scale
        self.bindings: list[tuple[str, keras.layers.Layer]] = []  # (scope, layer)

    @staticmethod
    def _name(scope: str) -> str:
        return scope.replace("/", "__")  # Keras layer names may not contain '/'

    def batch_norm(self, x, scope: str, relu: bool = True):
        layer = keras.layers.BatchNormalization(epsilon=self.bn_epsilon, scale=self.bn_scale, name=self._name(scope))
        self.bindings.append((scope, layer))
        x = layer(x)
        return keras.layers.ReLU(name=self._name(scope) + "__relu")(x) if relu else x

    def conv(self, x, filters, kernel, scope, stride=1, padding="same", batch_norm=True, relu=True):
        """slim conv2d: weights (+ BatchNorm, ReLU) or weights + biases with no activation."""
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        layer = keras.layers.Conv2D(
            filters, kernel, strides=stride, padding=padding, use_bias=not batch_norm, name=self._name(scope)
        )
        self.bindings.append((scope, layer))
        x = layer(x)
        if batch_norm:
            x = self.batch_norm(x, scope + "/BatchNorm", relu=relu)
        elif relu:
            x = keras.layers.ReLU(name=self._name(scope) + "__relu")(x)
        return x

    def conv_same(self, x, filters, kernel, scope, stride, **kwargs):
        """ResNet's conv2d_same: symmetric explicit padding when strided (differs from 'SAME' on even sizes)."""
        if stride == 1:
            return self.conv(x, filters, kernel, scope, 1, "same", **kwargs)
        pad = kernel - 1
        x = keras.layers.ZeroPadding2D(((pad // 2, pad - pad // 2),) * 2, name=self._name(scope) + "__pad")(x)
        return self.conv(x, filters, kernel, scope, stride, "valid", **kwargs)

    def variables(self) -> dict[str, tf.Variable]:
        out = {}
        for scope, layer in self.bindings:
            if isinstance(layer, keras.layers.Conv2D):
                out[f"{scope}/weights"] = layer.kernel
                if layer.use_bias:
                    out[f"{scope}/biases"] = layer.bias
            else:
                out[f"{scope}/beta"] = layer.beta
                if layer.scale:
                    out[f"{scope}/gamma"] = layer.gamma
                out[f"{scope}/moving_mean"] = layer.moving_mean
                out[f"{scope}/moving_variance"] = layer.moving_variance
        return out


# ----------------------------------------------------------------------------------------------- InceptionV3
def _inception_a(b, net, scope, pool_filters, branch1_names=("Conv2d_0a_1x1", "Conv2d_0b_5x5")):
    s = f"InceptionV3/{scope}"
    b0 = b.conv(net, 64, 1, f"{s}/Branch_0/Conv2d_0a_1x1")
    b1 = b.conv(net, 48, 1, f"{s}/Branch_1/{branch1_names[0]}")
    b1 = b.conv(b1, 64, 5, f"{s}/Branch_1/{branch1_names[1]}")
    b2 = b.conv(net, 64, 1, f"{s}/Branch_2/Conv2d_0a_1x1")
    b2 = b.conv(b2, 96, 3, f"{s}/Branch_2/Conv2d_0b_3x3")
    b2 = b.conv(b2, 96, 3, f"{s}/Branch_2/Conv2d_0c_3x3")
    b3 = keras.layers.AveragePooling2D(3, 1, "same", name=b._name(f"{s}/Branch_3/AvgPool_0a_3x3"))(net)
    b3 = b.conv(b3, pool_filters, 1, f"{s}/Branch_3/Conv2d_0b_1x1")
    return keras.layers.Concatenate(name=b._name(s))([b0, b1, b2, b3])


def _inception_c(b, net, scope, width):
    s = f"InceptionV3/{scope}"
    b0 = b.conv(net, 192, 1, f"{s}/Branch_0/Conv2d_0a_1x1")
    b1 = b.conv(net, width, 1, f"{s}/Branch_1/Conv2d_0a_1x1")
    b1 = b.conv(b1, width, (1, 7), f"{s}/Branch_1/Conv2d_0b_1x7")
    b1 = b.conv(b1, 192, (7, 1), f"{s}/Branch_1/Conv2d_0c_7x1")
    b2 = b.conv(net, width, 1, f"{s}/Branch_2/Conv2d_0a_1x1")
    b2 = b.conv(b2, width, (7, 1), f"{s}/Branch_2/Conv2d_0b_7x1")
    b2 = b.conv(b2, width, (1, 7), f"{s}/Branch_2/Conv2d_0c_1x7")
    b2 = b.conv(b2, width, (7, 1), f"{s}/Branch_2/Conv2d_0d_7x1")
    b2 = b.conv(b2, 192, (1, 7), f"{s}/Branch_2/Conv2d_0e_1x7")
    b3 = keras.layers.AveragePooling2D(3, 1, "same", name=b._name(f"{s}/Branch_3/AvgPool_0a_3x3"))(net)
    b3 = b.conv(b3, 192, 1, f"{s}/Branch_3/Conv2d_0b_1x1")
    return keras.layers.Concatenate(name=b._name(s))([b0, b1, b2, b3])


def _inception_e(b, net, scope, branch1_second):
    s = f"InceptionV3/{scope}"
    b0 = b.conv(net, 320, 1, f"{s}/Branch_0/Conv2d_0a_1x1")
    b1 = b.conv(net, 384, 1, f"{s}/Branch_1/Conv2d_0a_1x1")
    b1 = keras.layers.Concatenate(name=b._name(f"{s}/Branch_1"))(
        [
            b.conv(b1, 384, (1, 3), f"{s}/Branch_1/Conv2d_0b_1x3"),
            b.conv(b1, 384, (3, 1), f"{s}/Branch_1/{branch1_second}"),
        ]
    )
    b2 = b.conv(net, 448, 1, f"{s}/Branch_2/Conv2d_0a_1x1")
    b2 = b.conv(b2, 384, 3, f"{s}/Branch_2/Conv2d_0b_3x3")
    b2 = keras.layers.Concatenate(name=b._name(f"{s}/Branch_2"))(
        [
            b.conv(b2, 384, (1, 3), f"{s}/Branch_2/Conv2d_0c_1x3"),
            b.conv(b2, 384, (3, 1), f"{s}/Branch_2/Conv2d_0d_3x1"),
        ]
    )
    b3 = keras.layers.AveragePooling2D(3, 1, "same", name=b._name(f"{s}/Branch_3/AvgPool_0a_3x3"))(net)
    b3 = b.conv(b3, 192, 1, f"{s}/Branch_3/Conv2d_0b_1x1")
    return keras.layers.Concatenate(name=b._name(s))([b0, b1, b2, b3])


def inception_v3_logits_model(num_classes: int = 1001) -> keras.Model:
    """slim inception_v3 (is_training=False) on preprocessed [-1,1] 299x299 images -> logits."""
    b = _Builder(bn_epsilon=0.001, bn_scale=False)
    inputs = keras.Input((299, 299, 3))
    s = "InceptionV3"
    net = b.conv(inputs, 32, 3, f"{s}/Conv2d_1a_3x3", stride=2, padding="valid")
    net = b.conv(net, 32, 3, f"{s}/Conv2d_2a_3x3", padding="valid")
    net = b.conv(net, 64, 3, f"{s}/Conv2d_2b_3x3", padding="same")
    net = keras.layers.MaxPooling2D(3, 2, "valid", name=f"{s}__MaxPool_3a_3x3")(net)
    net = b.conv(net, 80, 1, f"{s}/Conv2d_3b_1x1", padding="valid")
    net = b.conv(net, 192, 3, f"{s}/Conv2d_4a_3x3", padding="valid")
    net = keras.layers.MaxPooling2D(3, 2, "valid", name=f"{s}__MaxPool_5a_3x3")(net)
    net = _inception_a(b, net, "Mixed_5b", 32)
    net = _inception_a(b, net, "Mixed_5c", 64, ("Conv2d_0b_1x1", "Conv_1_0c_5x5"))  # slim's names, verbatim
    net = _inception_a(b, net, "Mixed_5d", 64)
    m = f"{s}/Mixed_6a"
    b0 = b.conv(net, 384, 3, f"{m}/Branch_0/Conv2d_1a_1x1", stride=2, padding="valid")
    b1 = b.conv(net, 64, 1, f"{m}/Branch_1/Conv2d_0a_1x1")
    b1 = b.conv(b1, 96, 3, f"{m}/Branch_1/Conv2d_0b_3x3")
    b1 = b.conv(b1, 96, 3, f"{m}/Branch_1/Conv2d_1a_1x1", stride=2, padding="valid")
    b2 = keras.layers.MaxPooling2D(3, 2, "valid", name=b._name(f"{m}/Branch_2/MaxPool_1a_3x3"))(net)
    net = keras.layers.Concatenate(name=b._name(m))([b0, b1, b2])
    for scope, width in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        net = _inception_c(b, net, scope, width)
    m = f"{s}/Mixed_7a"
    b0 = b.conv(net, 192, 1, f"{m}/Branch_0/Conv2d_0a_1x1")
    b0 = b.conv(b0, 320, 3, f"{m}/Branch_0/Conv2d_1a_3x3", stride=2, padding="valid")
    b1 = b.conv(net, 192, 1, f"{m}/Branch_1/Conv2d_0a_1x1")
    b1 = b.conv(b1, 192, (1, 7), f"{m}/Branch_1/Conv2d_0b_1x7")
    b1 = b.conv(b1, 192, (7, 1), f"{m}/Branch_1/Conv2d_0c_7x1")
    b1 = b.conv(b1, 192, 3, f"{m}/Branch_1/Conv2d_1a_3x3", stride=2, padding="valid")
    b2 = keras.layers.MaxPooling2D(3, 2, "valid", name=b._name(f"{m}/Branch_2/MaxPool_1a_3x3"))(net)
    net = keras.layers.Concatenate(name=b._name(m))([b0, b1, b2])
    net = _inception_e(b, net, "Mixed_7b", "Conv2d_0b_3x1")
    net = _inception_e(b, net, "Mixed_7c", "Conv2d_0c_3x1")
    net = keras.layers.AveragePooling2D(8, 1, "valid", name=f"{s}__Logits__AvgPool_1a_8x8")(net)
    net = b.conv(net, num_classes, 1, f"{s}/Logits/Conv2d_1c_1x1", batch_norm=False, relu=False)
    logits = keras.layers.Reshape((num_classes,), name=f"{s}__Logits__SpatialSqueeze")(net)
    model = keras.Model(inputs, logits, name="InceptionV3")
    model.slim_variables = b.variables()
    return model


# ---------------------------------------------------------------------------------------------- ResNetV2-50
RESNET_V2_50_BLOCKS = (("block1", 64, 3, 2), ("block2", 128, 4, 2), ("block3", 256, 6, 2), ("block4", 512, 3, 1))


def _bottleneck_v2(b, net, scope, depth, bottleneck, stride, depth_in):
    preact = b.batch_norm(net, f"{scope}/preact")
    if depth == depth_in:  # slim's subsample: identity, or a 1x1 max-pool with the stride
        shortcut = net if stride == 1 else keras.layers.MaxPooling2D(1, stride, name=b._name(f"{scope}/shortcut"))(net)
    else:
        shortcut = b.conv(preact, depth, 1, f"{scope}/shortcut", stride=stride, batch_norm=False, relu=False)
    residual = b.conv(preact, bottleneck, 1, f"{scope}/conv1")
    residual = b.conv_same(residual, bottleneck, 3, f"{scope}/conv2", stride)
    residual = b.conv(residual, depth, 1, f"{scope}/conv3", batch_norm=False, relu=False)
    return keras.layers.Add(name=b._name(scope))([shortcut, residual])


def resnet_v2_50_logits_model(num_classes: int = 1001) -> keras.Model:
    """slim resnet_v2_50 (is_training=False, global pool) on preprocessed [-1,1] images -> logits."""
    b = _Builder(bn_epsilon=1e-5, bn_scale=True)
    s = "resnet_v2_50"
    inputs = keras.Input((None, None, 3))
    net = b.conv_same(inputs, 64, 7, f"{s}/conv1", 2, batch_norm=False, relu=False)
    net = keras.layers.MaxPooling2D(3, 2, "same", name=f"{s}__pool1")(net)
    depth_in = 64
    for block, base, units, stride in RESNET_V2_50_BLOCKS:
        for u in range(units):
            unit_stride = stride if u == units - 1 else 1  # the last unit of a block carries its stride
            net = _bottleneck_v2(
                b, net, f"{s}/{block}/unit_{u + 1}/bottleneck_v2", base * 4, base, unit_stride, depth_in
            )
            depth_in = base * 4
    net = b.batch_norm(net, f"{s}/postnorm")
    net = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{s}__pool5")(net)
    net = b.conv(net, num_classes, 1, f"{s}/logits", batch_norm=False, relu=False)
    logits = keras.layers.Reshape((num_classes,), name=f"{s}__SpatialSqueeze")(net)
    model = keras.Model(inputs, logits, name="resnet_v2_50")
    model.slim_variables = b.variables()
    return model


# --------------------------------------------------------------------------------------------------- loading
def load_slim_checkpoint(model, path: str) -> None:
    """Fill `model` (a slim-structured Keras model, or a WrappedModel of one) from a slim checkpoint.

    Reads V1 and V2 files with tf.train.load_checkpoint. Every model variable must be found with its exact
    shape, and every checkpoint tensor must be used or match an IGNORED pattern; otherwise one
    CheckpointError lists all the problems. Values must be finite (CheckpointError naming the tensors).
    """
    inner = model.inner if isinstance(model, WrappedModel) else model
    variables = getattr(inner, "slim_variables", None)
    if variables is None:
        raise ValueError("model has no slim_variables: build it with inception_v3() or resnet_v2_50()")
    try:
        reader = tf.train.load_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - TF raises several types for a bad path/file
        raise CheckpointError(f"{path}: cannot read checkpoint ({e})") from e
    shapes = reader.get_variable_to_shape_map()
    missing = sorted(n for n in variables if n not in shapes)
    misshaped = sorted(
        f"{n}: checkpoint {shapes[n]}, model {list(v.shape)}"
        for n, v in variables.items()
        if n in shapes and list(shapes[n]) != list(v.shape)
    )
    unexpected = sorted(n for n in shapes if n not in variables and not any(re.search(p, n) for p in IGNORED))
    if missing or misshaped or unexpected:
        parts = [
            f"{label} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else "")
            for label, items in (("missing", missing), ("wrong shape", misshaped), ("unexpected", unexpected))
            if items
        ]
        raise CheckpointError(f"{path}: checkpoint does not fit {inner.name}: " + "; ".join(parts))
    values = {name: np.asarray(reader.get_tensor(name), dtype=np.float32) for name in variables}
    bad = sorted(name for name, value in values.items() if not np.isfinite(value).all())
    if bad:  # checked before any assignment: a refused checkpoint leaves the model as it was
        raise CheckpointError(
            f"{path}: NaN or Inf in {len(bad)} tensor(s): " + ", ".join(bad[:20]) + (" ..." if len(bad) > 20 else "")
        )
    for name, var in variables.items():
        var.assign(values[name])


def inception_v3(checkpoint: str | None = None, num_classes: int = 1001) -> WrappedModel:
    """InceptionV3 on [0,1] 299x299 images -> 1001 logits; loads inception_v3.ckpt, adv_inception_v3.ckpt, ens*."""
    model = WrappedModel(inception_v3_logits_model(num_classes), inception_preprocess, num_classes, name="inception_v3")
    if checkpoint:
        load_slim_checkpoint(model, checkpoint)
    return model


def resnet_v2_50(checkpoint: str | None = None, num_classes: int = 1001) -> WrappedModel:
    """ResNetV2-50 on [0,1] images -> 1001 logits; loads resnet_v2_50.ckpt."""
    model = WrappedModel(resnet_v2_50_logits_model(num_classes), inception_preprocess, num_classes, name="resnet_v2_50")
    if checkpoint:
        load_slim_checkpoint(model, checkpoint)
    return model


def build(name: str, checkpoint: str | None = None) -> WrappedModel:
    """By model flag name: inception_v3 / adv_inception_v3 / ens3_adv_inception_v3 / ... / resnet_v2_50."""
    if name == "resnet_v2_50":
        return resnet_v2_50(checkpoint)
    if name in CHECKPOINTS:
        return inception_v3(checkpoint)
    raise ValueError(f"model {name!r}: expected one of {sorted(CHECKPOINTS)}")
