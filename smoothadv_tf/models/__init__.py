"""Models with the project's contract: [0, 1] NHWC images in, logits out."""

from smoothadv_tf.models.applications import APPLICATIONS, keras_application
from smoothadv_tf.models.c4 import accuracy, c4, load_or_train_c4, save_c4, train_c4
from smoothadv_tf.models.wrap import WrappedModel, from_saved_model, inception_preprocess, wrap

__all__ = [
    "APPLICATIONS",
    "keras_application",
    "accuracy",
    "c4",
    "load_or_train_c4",
    "save_c4",
    "train_c4",
    "WrappedModel",
    "from_saved_model",
    "inception_preprocess",
    "wrap",
]
