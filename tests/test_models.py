"""C4, its adversarial training, and wrapping foreign models (SavedModel) into the [0,1] -> logits contract."""

import keras
import numpy as np
import pytest

from smoothadv_tf import attacks
from smoothadv_tf.data import load_fashion_mnist
from smoothadv_tf.models import c4, from_saved_model, inception_preprocess, train_c4, wrap


def test_c4_structure():
    model = c4()
    shapes = [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert shapes == [(14, 14, 64), (5, 5, 128), (1, 1, 128), (128,), (10,)]
    assert [layer.kernel.shape[:2] for layer in model.layers[:3]] == [(8, 8), (6, 6), (5, 5)]


@pytest.mark.slow
def test_adversarial_training_resists_fgsm(c4_model, fashion_test):
    train = load_fashion_mnist("train")
    # one epoch on a third of the split is enough to show the effect (measured: P_suc 0.55 against 0.83)
    robust = train_c4(train.images[:20000], train.labels[:20000], epochs=1, seed=0, adversarial_training=True)
    x, y = fashion_test.images[:300], fashion_test.labels[:300]
    clean = attacks.fgsm(c4_model, x, y, epsilon=0.1)
    adv = attacks.fgsm(robust, x, y, epsilon=0.1)
    p_clean = clean.success[clean.originally_correct].mean()
    p_adv = adv.success[adv.originally_correct].mean()
    assert adv.originally_correct.mean() > 0.7  # still a classifier
    assert p_adv < p_clean - 0.2, (p_adv, p_clean)


def test_wrap_and_saved_model_round_trip(c4_model, fashion_test, tmp_path):
    x = fashion_test.images[:8]
    # a model that expects [-1, 1] inputs, wrapped with its preprocessing
    inner = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Lambda(lambda t: (t + 1.0) / 2.0), c4_model])
    wrapped = wrap(inner, preprocess=inception_preprocess, num_classes=10)
    np.testing.assert_allclose(wrapped(x).numpy(), c4_model(x).numpy(), atol=1e-5)
    # export one of our models as a SavedModel, load it back through TFSMLayer
    export_dir = str(tmp_path / "saved")
    c4_model.export(export_dir)
    loaded = from_saved_model(export_dir, num_classes=10)
    np.testing.assert_allclose(loaded(x).numpy(), c4_model(x).numpy(), atol=1e-5)
    # and attacks run on it like on any model
    r = attacks.pgd2(loaded, x, fashion_test.labels[:8])
    assert r.success[r.originally_correct].mean() > 0.8
    with pytest.raises(ValueError, match="num_classes"):
        wrap(c4_model, num_classes=1001)(x)
    with pytest.raises(ValueError, match="SavedModel"):
        from_saved_model(str(tmp_path / "nowhere"))
