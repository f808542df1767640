"""C4, its adversarial training, and wrapping foreign models (SavedModel) into the [0,1] -> logits contract."""

import os

import keras
import numpy as np
import pytest
from conftest import assert_refused, run_script, save_without_signatures

from smoothadv_tf import attacks, experiment
from smoothadv_tf.data import load_fashion_mnist
from smoothadv_tf.models import c4, from_saved_model, inception_preprocess, train_c4, wrap
from smoothadv_tf.models.wrap import saved_model_endpoints


def test_c4_structure():
    model = c4()
    shapes = [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert shapes == [(14, 14, 64), (5, 5, 128), (1, 1, 128), (128,), (10,)]
    assert [layer.kernel.shape[:2] for layer in model.layers[:3]] == [(8, 8), (6, 6), (5, 5)]


@pytest.mark.slow
def test_adversarial_training_resists_fgsm(c4_model, fashion_test):
    train = load_fashion_mnist("train")
    # one epoch on a third of the split is enough to show the effect (measured: P_suc 0.56 against 0.82)
    robust = train_c4(train.images[:20000], train.labels[:20000], epochs=1, seed=0, train_attack="step_ll")
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
    # export one of our models as a SavedModel with signatures (keras' export: serving_default and serve) and
    # as TF-Hub's TF2 SavedModels are, without any (the object's __call__ only); load each back every way
    with_signatures, without = str(tmp_path / "signatures"), str(tmp_path / "no_signatures")
    c4_model.export(with_signatures, verbose=False)
    save_without_signatures(c4_model, (28, 28, 1), without)
    assert saved_model_endpoints(without) == ([], ["__call__"])
    for path, endpoint in [(with_signatures, None), (with_signatures, "serve"), (without, None), (without, "__call__")]:
        loaded = from_saved_model(path, num_classes=10, endpoint=endpoint)
        np.testing.assert_array_equal(loaded(x).numpy(), c4_model(x).numpy())
        assert weight_values(loaded) == weight_values(c4_model)  # tracked: the run identity hashes them
    # and attacks run on it like on any model
    r = attacks.pgd2(loaded, x, fashion_test.labels[:8])
    assert r.success[r.originally_correct].mean() > 0.8
    with pytest.raises(ValueError, match="num_classes"):
        wrap(c4_model, num_classes=1001)(x)
    with pytest.raises(ValueError, match="SavedModel"):
        from_saved_model(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"no endpoint 'serving_default'; signatures \[\], functions \['__call__'\]"):
        from_saved_model(without, endpoint="serving_default")


def weight_values(model) -> list[bytes]:
    """The model's weight values, in a canonical order."""
    return sorted(np.asarray(w).tobytes() for w in model.weights)


@pytest.mark.slow
def test_keras_applications_take_unit_images_and_give_logits():
    """Each family's preprocessing, restated here from the Keras documentation, applied by the wrapper to
    [0, 1] images: Inception / MobileNet scale to [-1, 1], ResNet50 ("caffe") is BGR minus the ImageNet means
    on [0, 255], EfficientNet normalises inside the model (takes [0, 255]). Random weights (no download)."""
    from conftest import photos

    from smoothadv_tf.models import APPLICATIONS, keras_application

    bgr_mean = np.array([103.939, 116.779, 123.68], np.float32)
    restated = {
        "InceptionV3": lambda x: 2.0 * x - 1.0,
        "MobileNetV2": lambda x: 2.0 * x - 1.0,
        "ResNet50": lambda x: x[..., ::-1] * 255.0 - bgr_mean,
        "EfficientNetB0": lambda x: x * 255.0,
    }
    assert set(restated) == set(APPLICATIONS)
    assert experiment.KERAS_APPLICATIONS == {name: side for name, (_, _, side) in APPLICATIONS.items()}
    for name, preprocess in restated.items():
        keras.utils.set_random_seed(0)
        model = keras_application(name, weights=None)
        side = APPLICATIONS[name][2]
        x = photos(side, 1)
        assert model.inner.input_shape == (None, side, side, 3)
        logits = model(x).numpy()
        assert logits.shape == (1, 1000) and np.isfinite(logits).all()
        assert not np.allclose(np.exp(logits).sum(), 1.0, atol=1e-3)  # logits, not probabilities
        np.testing.assert_allclose(logits, model.inner(preprocess(x)).numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="expected one of"):
        keras_application("VGG16", weights=None)


def _white_box(*args):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": root}
    cmd = [sys.executable, os.path.join(root, "scripts", "white_box.py"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_scripts_attack_saved_models_and_keras_applications(c4_model, fashion_test, tmp_path):
    """--model=savedmodel:<dir> gives the same FGSM outcomes as the model it was exported from;
    --model=keras:InceptionV3 on NIPS-17 maps slim's labels (1..1000) to Keras' (0..999), refuses label 0."""
    import json

    from conftest import photos
    from PIL import Image

    from smoothadv_tf.models import keras_application

    export = tmp_path / "c4_export"
    c4_model.export(str(export))
    fgsm = ["--attacks=fgsm", "--attack_params=epsilon=0.1", "--num_images=20", "--batch_size=20"]
    done = _white_box(f"--model=savedmodel:{export}", *fgsm, f"--output_dir={tmp_path}/out")
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (tmp_path / "out/white_box").glob("fashion_mnist-savedmodel-c4_export-*")  # + hash of the path
    assert json.loads((folder / "paper/run.json").read_text())["model"] == f"savedmodel:{export}"
    summary = json.loads((folder / "paper/summary.json").read_text())
    direct = attacks.fgsm(c4_model, fashion_test.images[:20], fashion_test.labels[:20], epsilon=0.1)
    assert summary["correct"] == direct.originally_correct.sum()
    assert summary["attacks"]["fgsm"]["successes"] == direct.success.sum()

    keras.utils.set_random_seed(0)
    model = keras_application("InceptionV3", weights=None)
    weights = tmp_path / "inception.weights.h5"
    model.inner.save_weights(weights)
    images = np.round(photos(299, 2) * 255) / 255
    predicted = np.argmax(model(images).numpy(), -1)  # random weights: the model's own classes are the truth
    data_dir = tmp_path / "nips17"
    data_dir.mkdir()
    for k, img in enumerate(images):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(data_dir / f"im{k}.png")
    (data_dir / "dev_dataset.csv").write_text(f"ImageId,TrueLabel\nim0,{predicted[0] + 1}\nim1,{predicted[1] + 1}\n")
    args = ["--dataset=nips17", f"--data_dir={data_dir}", "--model=keras:InceptionV3", f"--checkpoint={weights}"]
    done = _white_box(*args, *fgsm, f"--output_dir={tmp_path}/out")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "out/white_box/nips17-keras-InceptionV3/paper/summary.json").read_text())
    assert summary["images"] == 2 and summary["correct"] == 2  # shifted by one, both would be wrong
    (data_dir / "dev_dataset.csv").write_text(f"ImageId,TrueLabel\nim0,0\nim1,{predicted[1] + 1}\n")
    done = run_script("white_box.py", *args, *fgsm, f"--output_dir={tmp_path}/out2")
    assert_refused(done, "white_box.py", "label 0 (slim's background class)")  # one line, TensorFlow loud
    assert not (tmp_path / "out2").exists()
