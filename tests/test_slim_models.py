"""Our Keras InceptionV3 / ResNetV2-50 against the graphs tf_slim itself builds (the oracle), through
checkpoints tf_slim's Saver writes in both V1 and V2 formats with every variable randomised."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import save_without_signatures

from smoothadv_tf.models import from_saved_model
from smoothadv_tf.models import slim as slim_models
from smoothadv_tf.models.slim import CheckpointError, load_slim_checkpoint

# One xdist worker builds the session's tf_slim graphs (conftest) and runs every test that uses them.
pytestmark = pytest.mark.xdist_group("slim")


def _max_relative_error(ours, ref):
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.mark.slow
@pytest.mark.parametrize("version", ["V1", "V2"])
def test_inception_v3_matches_slim(slim_inception_v3, version):
    images, ref, paths = slim_inception_v3
    model = slim_models.inception_v3(paths[version])
    ours = model(images).numpy()
    assert ours.shape == (2, 1001)
    assert _max_relative_error(ours, ref) <= 1e-4, _max_relative_error(ours, ref)
    assert np.std(ref) > 1e-3  # the randomised network is not degenerate


@pytest.mark.slow
def test_inception_v3_as_a_saved_model_gives_slim_logits(slim_inception_v3, tmp_path):
    """Our slim InceptionV3 exported both ways a SavedModel comes (with signatures, and as TF-Hub's TF2
    models: a callable object without any), loaded back by from_saved_model: the logits of the source model,
    which are tf_slim's own."""
    images, ref, paths = slim_inception_v3
    source = slim_models.inception_v3(paths["V2"])
    expected = source(images).numpy()
    with_signatures, without = str(tmp_path / "signatures"), str(tmp_path / "no_signatures")
    source.export(with_signatures, input_signature=[tf.TensorSpec([None, 299, 299, 3], tf.float32)], verbose=False)
    save_without_signatures(source, (299, 299, 3), without)
    for path in (with_signatures, without):
        loaded = from_saved_model(path, num_classes=1001)
        got = loaded(images).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
        assert _max_relative_error(got, ref) <= 1e-4


@pytest.mark.slow
def test_resnet_v2_50_matches_slim(slim_resnet_v2_50):
    (images, small), (ref, ref_small), path = slim_resnet_v2_50
    model = slim_models.resnet_v2_50(path)
    ours = model(images).numpy()
    assert _max_relative_error(ours, ref) <= 1e-4, _max_relative_error(ours, ref)
    # and at the 224x224 size slim trained ResNet with (even sizes exercise conv2d_same's explicit padding)
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
def test_bad_checkpoints_give_one_clear_error(tmp_path, slim_resnet_v2_50):
    path = slim_resnet_v2_50[2]
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
