"""Shared fixtures: real data (Fashion-MNIST IDX files, scikit-image photos) and the tf_slim oracle shim."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from smoothadv_tf import data  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str, size: int | None = None) -> np.ndarray:
    """A bundled scikit-image photo as float32 HWC in [0,1], optionally resized to size x size."""
    from skimage import data as skdata
    from skimage.transform import resize

    img = getattr(skdata, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3].astype(np.float32) / 255.0
    if size is not None:
        img = resize(img, (size, size), anti_aliasing=True).astype(np.float32)
    return img


def photos(size: int, count: int = 2) -> np.ndarray:
    return np.stack([photo(PHOTOS[i % len(PHOTOS)], size) for i in range(count)])


def import_tf_slim():
    """tf_slim 1.1.0 on TF 2.21 needs tf-keras and this module alias (test helpers only)."""
    import tf_keras.src.legacy_tf_layers as legacy

    sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy)
    import tf_slim

    return tf_slim


@pytest.fixture(scope="session")
def fashion_test():
    if not os.path.isdir(data.FASHION_MNIST_DIR):
        pytest.fail(f"{data.FASHION_MNIST_DIR} missing: install the Debian package dataset-fashion-mnist")
    return data.load_fashion_mnist("test")


@pytest.fixture(scope="session")
def c4_model(fashion_test):
    """A C4 trained for one epoch on half of real Fashion-MNIST's training split (~10 s)."""
    from smoothadv_tf.models import accuracy, train_c4

    train = data.load_fashion_mnist("train")
    model = train_c4(train.images[:30000], train.labels[:30000], epochs=1, batch_size=128, seed=0)
    acc = accuracy(model, fashion_test.images[:2000], fashion_test.labels[:2000])
    assert acc > 0.75, acc  # a real classifier, not chance
    return model


@pytest.fixture(scope="session")
def c4_path(c4_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("models") / "c4.keras")
    c4_model.save(path)
    return path
