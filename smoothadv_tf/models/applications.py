"""keras.applications classifiers behind the project's contract: [0, 1] NHWC images in, logits out.

Each family's own ``preprocess_input`` runs inside the wrapped model on the image scaled to [0, 255] (what the
Keras weights were trained on), so attacks and distortions stay in [0, 1] pixel space. The classifier is built
without its softmax (``classifier_activation=None``): the attacks need logits. Keras' ImageNet models have 1000
classes, slim's 1001 (0 = background): see :func:`smoothadv_tf.models.loading.fit_labels` for how NIPS-17 labels are mapped.
"""

from __future__ import annotations

import keras

from smoothadv_tf.models.wrap import WrappedModel

# name -> (constructor, preprocessing module, input side)
APPLICATIONS = {
    "InceptionV3": ("InceptionV3", "inception_v3", 299),
    "ResNet50": ("ResNet50", "resnet50", 224),
    "MobileNetV2": ("MobileNetV2", "mobilenet_v2", 224),
    "EfficientNetB0": ("EfficientNetB0", "efficientnet", 224),
}


def keras_application(name: str, weights: str | None = "imagenet", num_classes: int = 1000) -> WrappedModel:
    """A keras.applications classifier (one of :data:`APPLICATIONS`) on [0, 1] images of its input size ->
    `num_classes` logits. ``weights`` is passed to Keras ("imagenet" downloads them once; None: random; or a
    weights file path)."""
    if name not in APPLICATIONS:
        raise ValueError(f"keras application {name!r}: expected one of {sorted(APPLICATIONS)}")
    constructor, module, side = APPLICATIONS[name]
    preprocess_input = getattr(keras.applications, module).preprocess_input
    inner = getattr(keras.applications, constructor)(
        weights=weights, input_shape=(side, side, 3), classes=num_classes, classifier_activation=None
    )

    def preprocess(x):
        return preprocess_input(x * 255.0)

    return WrappedModel(inner, preprocess, num_classes, name=f"keras_{name}")
