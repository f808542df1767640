"""Shared fixtures: real data (Fashion-MNIST IDX files, scikit-image photos), the tf_slim oracle shim, and
scripts run as a user runs them, with TensorFlow loud."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from smoothadv_tf import data  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOUD_DIR = os.path.join(ROOT, "tests", "loud")


def _loud_startup_notice() -> str:
    """The line tests/loud/sitecustomize.py writes at interpreter start-up (read, not imported: importing it
    would make this process loud)."""
    with open(os.path.join(LOUD_DIR, "sitecustomize.py")) as f:
        module = ast.parse(f.read())
    for node in module.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "STARTUP_NOTICE":
            return ast.literal_eval(node.value)
    raise AssertionError("tests/loud/sitecustomize.py defines no STARTUP_NOTICE")


LOUD_STARTUP_NOTICE = _loud_startup_notice()
# TensorFlow as loud as any machine makes it: every native log level, oneDNN on (its notice is printed before
# absl is initialised, whatever TF_CPP_MIN_LOG_LEVEL says), and TensorFlow-like notices injected at start-up
# and at TensorFlow's import (tests/loud/sitecustomize.py).
# (oneDNN as exported, so that the whole suite can run with it off: TF_ENABLE_ONEDNN_OPTS=0 make test)
LOUD_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "0",
    "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1"),
    "PYTHONPATH": os.pathsep.join([LOUD_DIR, ROOT]),
}


def run_script(script: str, *args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run scripts/<script> as a user would, in the loud environment (scheduler variables removed)."""
    base = {k: v for k, v in os.environ.items() if k not in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")}
    base.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest sets it for this process; the subprocess gets LOUD_ENV's
    cmd = [sys.executable, os.path.join(ROOT, "scripts", script), *args]
    return subprocess.run(
        cmd, env={**base, **LOUD_ENV, **(env or {})}, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def assert_refused(done: subprocess.CompletedProcess, script: str, *fragments: str) -> str:
    """Exit 2 and, on stderr, exactly one line: ours, `<script>: error: ...` holding each fragment. Only the
    line the loud environment injects at interpreter start-up (no script can hide it) is discounted, and it must
    be there: a test that ran quiet (the loud environment lost) proves nothing."""
    assert LOUD_STARTUP_NOTICE in done.stderr.splitlines(), "not run in the loud environment: " + done.stderr[-2000:]
    lines = [ln for ln in done.stderr.splitlines() if ln != LOUD_STARTUP_NOTICE]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tree(path) -> dict:
    """Every file under `path` with its content hash: what a refused run must leave unchanged (lock files
    aside: they only name their last holder)."""
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            if name.endswith(".lock"):
                continue
            full = os.path.join(folder, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hash(f.read())
    return out


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


@pytest.fixture(autouse=True)
def fresh_setup_cache(monkeypatch):
    """Every test starts with an empty smoothing set-up cache (smoothing.SETUP_CACHE), so no set-up built by an
    earlier test is reused unnoticed: what a test compares is computed in it. Only where the module is loaded
    already (TF-free tests stay TF-free)."""
    smoothing = sys.modules.get("smoothadv_tf.smoothing")
    if smoothing is not None:
        monkeypatch.setattr(smoothing, "SETUP_CACHE", smoothing.SetupCache())


@pytest.fixture(scope="session")
def fashion_test():
    if not os.path.isdir(data.FASHION_MNIST_DIR):
        pytest.fail(f"{data.FASHION_MNIST_DIR} missing: install the Debian package dataset-fashion-mnist")
    return data.load_fashion_mnist("test")


@pytest.fixture(scope="session")
def c4_model(fashion_test, tmp_path_factory):
    """A C4 trained for one epoch on half of real Fashion-MNIST's training split (~40 s). Under xdist the first
    worker trains and saves it in the session's shared temporary folder, the others load it (a file lock)."""
    import fcntl

    import keras

    from smoothadv_tf.models import accuracy, train_c4

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # one folder per session, common to its workers
    path = shared / "c4_session.keras"
    with open(shared / "c4_session.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            model = keras.models.load_model(path)
        else:
            train = data.load_fashion_mnist("train")
            model = train_c4(train.images[:30000], train.labels[:30000], epochs=1, batch_size=128, seed=0)
            model.save(path.with_suffix(".tmp.keras"))
            os.replace(path.with_suffix(".tmp.keras"), path)
    acc = accuracy(model, fashion_test.images[:2000], fashion_test.labels[:2000])
    assert acc > 0.75, acc  # a real classifier, not chance
    return model


@pytest.fixture(scope="session")
def c4_path(c4_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("models") / "c4.keras")
    c4_model.save(path)
    return path


# ---------------------------------------------------------------- tf_slim oracle graphs (test helpers only)
def _randomise(sess, variables, seed):
    rng = np.random.default_rng(seed)
    for v in variables:
        shape = v.shape.as_list()
        name = v.op.name
        if name.endswith("moving_variance") or name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("moving_mean", "beta", "biases")):
            value = rng.normal(0.0, 0.1, shape)
        elif name.endswith("weights"):
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        else:
            continue  # global_step
        v.load(value.astype(np.float32), sess)


def slim_reference(net: str, image_sets, save_prefix: str, versions=("V2",), seed: int = 0):
    """Build the slim graph once, randomise all variables, save it in each checkpoint format of `versions`;
    return slim's logits for each array of `image_sets` and {version: checkpoint path}."""
    import tensorflow as tf

    tf_slim = import_tf_slim()
    from tf_slim.nets import inception_v3, resnet_v2

    shapes = {tuple(images.shape[1:]) for images in image_sets}
    graph = tf.Graph()
    with graph.as_default():
        # one size: a static shape (InceptionV3's last pool needs it); several: ResNet, size-agnostic
        shape = next(iter(shapes)) if len(shapes) == 1 else (None, None, image_sets[0].shape[-1])
        x = tf.compat.v1.placeholder(tf.float32, (None, *shape))
        preprocessed = 2.0 * x - 1.0  # slim's inception preprocessing of [0,1] images
        if net == "inception_v3":
            with tf_slim.arg_scope(inception_v3.inception_v3_arg_scope()):
                logits, _ = inception_v3.inception_v3(preprocessed, num_classes=1001, is_training=False)
        else:
            with tf_slim.arg_scope(resnet_v2.resnet_arg_scope()):
                logits, _ = resnet_v2.resnet_v2_50(preprocessed, num_classes=1001, is_training=False)
        variables = tf.compat.v1.global_variables()
        formats = {"V1": tf.compat.v1.train.SaverDef.V1, "V2": tf.compat.v1.train.SaverDef.V2}
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            _randomise(sess, variables, seed)
            paths = {
                v: tf.compat.v1.train.Saver(variables, write_version=formats[v]).save(sess, f"{save_prefix}.{v}")
                for v in versions
            }
            outs = [sess.run(logits, {x: images}).reshape(len(images), -1) for images in image_sets]  # resnet: 1x1
    return outs, paths


@pytest.fixture(scope="session")
def slim_inception_v3(tmp_path_factory):
    """tf_slim's own InceptionV3 with randomised weights, built once: two real photos (8-bit values, as PNGs
    hold them), slim's logits for them, and the checkpoint saved in both formats {"V1": path, "V2": path}."""
    images = np.round(photos(299, 2) * 255) / 255
    (logits,), paths = slim_reference(
        "inception_v3", [images], str(tmp_path_factory.mktemp("slim") / "inception_v3"), ("V1", "V2")
    )
    return images, logits, paths


@pytest.fixture(scope="session")
def slim_resnet_v2_50(tmp_path_factory):
    """tf_slim's ResNetV2-50 with randomised weights, built once: photos at 299 and 224 pixels, slim's logits
    for each, and the V2 checkpoint path."""
    sets = [photos(299, 2), photos(224, 2)]
    logits, paths = slim_reference("resnet_v2_50", sets, str(tmp_path_factory.mktemp("slim") / "resnet"), seed=1)
    return sets, logits, paths["V2"]


def save_without_signatures(model, input_shape, path: str) -> None:
    """A SavedModel as TF-Hub's TF2 models are: a restored object to call, no signature."""
    import tensorflow as tf

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.float32)])
        def __call__(self, images):
            return self.model(images)

    tf.saved_model.save(Module(), path, signatures={})  # {}: no serving_default traced from __call__
