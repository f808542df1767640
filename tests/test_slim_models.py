"""Our Keras InceptionV3 / ResNetV2-50 against the graphs tf_slim itself builds (the oracle), through
checkpoints tf_slim's Saver writes in both V1 and V2 formats with every variable randomised."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import import_tf_slim, photos

from smoothadv_tf.models import slim as slim_models
from smoothadv_tf.models.slim import CheckpointError, load_slim_checkpoint


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


def slim_reference(net: str, images: np.ndarray, save_prefix: str, version: str, seed: int = 0):
    """Build the slim graph, randomise all variables, save a checkpoint, return slim's logits."""
    tf_slim = import_tf_slim()
    from tf_slim.nets import inception_v3, resnet_v2

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None,) + images.shape[1:])
        preprocessed = 2.0 * x - 1.0  # slim's inception preprocessing of [0,1] images
        if net == "inception_v3":
            with tf_slim.arg_scope(inception_v3.inception_v3_arg_scope()):
                logits, _ = inception_v3.inception_v3(preprocessed, num_classes=1001, is_training=False)
        else:
            with tf_slim.arg_scope(resnet_v2.resnet_arg_scope()):
                logits, _ = resnet_v2.resnet_v2_50(preprocessed, num_classes=1001, is_training=False)
        variables = tf.compat.v1.global_variables()
        write_version = {"V1": tf.compat.v1.train.SaverDef.V1, "V2": tf.compat.v1.train.SaverDef.V2}[version]
        saver = tf.compat.v1.train.Saver(variables, write_version=write_version)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            _randomise(sess, variables, seed)
            path = saver.save(sess, save_prefix)
            out = sess.run(logits, {x: images}).reshape(len(images), -1)  # resnet keeps 1x1 dims
    return out, path


def _max_relative_error(ours, ref):
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def images():
    return photos(299, 2)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["V1", "V2"])
def test_inception_v3_matches_slim(tmp_path, images, version):
    ref, path = slim_reference("inception_v3", images, str(tmp_path / "inception_v3.ckpt"), version)
    model = slim_models.inception_v3(path)
    ours = model(images).numpy()
    assert ours.shape == (2, 1001)
    assert _max_relative_error(ours, ref) <= 1e-4, _max_relative_error(ours, ref)
    assert np.std(ref) > 1e-3  # the randomised network is not degenerate


@pytest.mark.slow
def test_resnet_v2_50_matches_slim(tmp_path, images):
    ref, path = slim_reference("resnet_v2_50", images, str(tmp_path / "resnet_v2_50.ckpt"), "V2", seed=1)
    model = slim_models.resnet_v2_50(path)
    ours = model(images).numpy()
    assert _max_relative_error(ours, ref) <= 1e-4, _max_relative_error(ours, ref)
    # and at the 224x224 size slim trained ResNet with (even sizes exercise conv2d_same's explicit padding)
    small = photos(224, 2)
    ref_small, _ = slim_reference("resnet_v2_50", small, str(tmp_path / "r224.ckpt"), "V2", seed=1)
    assert _max_relative_error(model(small).numpy(), ref_small) <= 1e-4


def _rewrite_checkpoint(src: str, dst: str, edit):
    """Copy a checkpoint through `edit(dict name -> array)` with TF's own checkpoint writer."""
    reader = tf.train.load_checkpoint(src)
    tensors = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    tensors = edit(tensors)
    graph = tf.Graph()
    with graph.as_default():
        vs = [tf.compat.v1.Variable(v, name=n) for n, v in tensors.items()]
        saver = tf.compat.v1.train.Saver(vs)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, dst)


@pytest.mark.slow
def test_bad_checkpoints_give_one_clear_error(tmp_path, images):
    _, path = slim_reference("resnet_v2_50", images[:1], str(tmp_path / "ok.ckpt"), "V2")
    conv = "resnet_v2_50/block1/unit_1/bottleneck_v2/conv1/weights"
    beta = "resnet_v2_50/postnorm/beta"
    logits = "resnet_v2_50/logits/biases"

    def edit(t):
        t.pop(conv)
        t["resnet_v2_50/postnorm/betta"] = t.pop(beta)
        t[logits] = np.zeros(1000, np.float32)
        return t

    bad = _rewrite_checkpoint(path, str(tmp_path / "bad.ckpt"), edit)
    with pytest.raises(CheckpointError) as err:
        slim_models.resnet_v2_50(bad)
    message = str(err.value)
    assert conv in message and beta in message  # missing (removed and renamed)
    assert "resnet_v2_50/postnorm/betta" in message  # unexpected
    assert f"{logits}: checkpoint [1000], model [1001]" in message  # wrong shape
    with pytest.raises(CheckpointError, match="cannot read"):
        load_slim_checkpoint(slim_models.resnet_v2_50(), str(tmp_path / "nothing.ckpt"))

    def poison(t):
        t[beta] = t[beta].copy()
        t[beta][5] = np.nan
        return t

    nan = _rewrite_checkpoint(path, str(tmp_path / "nan.ckpt"), poison)
    model = slim_models.resnet_v2_50()
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(CheckpointError, match=f"NaN or Inf in 1 tensor\\(s\\): {beta}$"):
        load_slim_checkpoint(model, nan)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))  # refused before any assignment
