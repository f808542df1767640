"""Adversarial training (smoothadv_tf.training): the Keras wrapper trains, resists its own attack, saves the plain
classifier, runs the same under MirroredStrategy, reproduces the hand-written step l.l loop it replaced, resumes,
and refuses bad options before training."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference_c4_training import train_c4 as reference_train_c4

from smoothadv_tf import attacks, presets
from smoothadv_tf.data import load_fashion_mnist
from smoothadv_tf.models import accuracy, c4, train_c4
from smoothadv_tf.training import AdversarialTraining, adversarial_positions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fashion_train():
    return load_fashion_mnist("train")


def compiled(trainer, optimizer=None):
    trainer.compile(
        optimizer or keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return trainer


def weights_of(model):
    return [np.asarray(w) for w in model.weights]


# ------------------------------------------------------------------------------------------------ it trains
@pytest.mark.slow
def test_smooth_training_lowers_its_loss_and_resists_its_own_attack(fashion_train, fashion_test, c4_model):
    """sPGD₂ training (5 steps at the Fashion-MNIST budget), two epochs on half the split, through plain
    ``fit(x, y, batch_size=128)`` (30,000 images: a partial last batch, so the step runs for any batch size).
    Measured first: losses 0.882 -> 0.689; sPGD₂ at the training budget succeeds on 0.695 of the session's
    clean C4's correctly classified images and on 0.281 of the sPGD₂-trained one's (300 test images)."""
    keras.utils.set_random_seed(0)
    trainer = compiled(AdversarialTraining(c4(), "smooth_pgd2", dataset="fashion_mnist"))
    x, y = fashion_train.images[:30000], fashion_train.labels[:30000]
    history = trainer.fit(x, y, batch_size=128, epochs=2, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[1] < 0.9 * losses[0], losses

    budget = {k: v for k, v in trainer.params.items() if k not in presets.MIX_OPTIONS}
    xt, yt = fashion_test.images[:300], fashion_test.labels[:300]
    clean = attacks.smooth_pgd2(c4_model, xt, yt, early_stop=False, **budget)
    robust = attacks.smooth_pgd2(trainer.classifier, xt, yt, early_stop=False, **budget)
    p_clean = clean.success[clean.originally_correct].mean()
    p_robust = robust.success[robust.originally_correct].mean()
    assert robust.originally_correct.mean() > 0.75  # still a classifier
    assert p_robust < p_clean - 0.25, (p_robust, p_clean)


# ------------------------------------------------------------------------------ the artefact is the classifier
def test_checkpoint_is_the_plain_classifier(fashion_train, tmp_path):
    """ModelCheckpoint in fit saves the classifier: it loads in a process where this library cannot be imported,
    with the logits of the trained classifier."""
    keras.utils.set_random_seed(0)
    trainer = compiled(AdversarialTraining(c4(), "pgd2"))
    path = str(tmp_path / "c4.keras")
    x, y = fashion_train.images[:1280], fashion_train.labels[:1280]
    trainer.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(path)])
    probe = fashion_train.images[-16:]
    np.save(tmp_path / "probe.npy", probe)
    code = (
        "import sys, numpy as np\n"
        "sys.modules['smoothadv_tf'] = None  # any import of the library fails\n"
        "import keras\n"
        f"model = keras.models.load_model({path!r})\n"
        f"np.save({str(tmp_path / 'logits.npy')!r}, model(np.load({str(tmp_path / 'probe.npy')!r})).numpy())\n"
        "print(type(model).__name__)\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "Sequential"
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), trainer.classifier(probe).numpy())
    assert np.abs(trainer.classifier(probe).numpy()).max() > 0  # a trained model, not an empty one


def test_mixed_precision_trains(fashion_train):
    """Under mixed_bfloat16 (what a CPU runs fast; TensorFlow's float16 convolutions on CPU take ~20 s a batch
    here) the attack is crafted in float32 from the bfloat16 logits and the loss falls (measured: 1.89, 1.28,
    1.06)."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        trainer = compiled(AdversarialTraining(c4(), "smooth_pgd2"))
        assert trainer.classifier.layers[0].compute_dtype == "bfloat16"
        x, y = fashion_train.images[:1280], fashion_train.labels[:1280]
        losses = trainer.fit(x, y, batch_size=128, epochs=3, shuffle=False, verbose=0).history["loss"]
        crafted = trainer.craft(tf.constant(x[:8]), tf.constant(y[:8].astype(np.int64)))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(np.isfinite(losses)) and losses[2] < losses[1] < losses[0], losses
    assert crafted.dtype == tf.float32 and 0 < np.abs(crafted.numpy() - x[:8]).max() <= 1


# ------------------------------------------------------------------------------------------ one vs two devices
MIRRORED = r"""
import sys, numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from smoothadv_tf.data import load_fashion_mnist
from smoothadv_tf.models import c4
from smoothadv_tf.training import AdversarialTraining

train = load_fashion_mnist("train")
x, y = train.images[:256], train.labels[:256]
out = {}
for attack in sys.argv[2:]:
    for name, strategy in [("one", None), ("two", tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"]))]:
        keras.utils.set_random_seed(0)
        with strategy.scope() if strategy else tf.device("CPU:0"):
            trainer = AdversarialTraining(c4(), attack, seed=3)
            trainer.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                            jit_compile=False)
        trainer.fit(x, y, batch_size=256, epochs=1, shuffle=False, verbose=0)
        for i, w in enumerate(trainer.classifier.weights):
            out[f"{attack}/{name}/{i}"] = np.asarray(w)
np.savez(sys.argv[1], **out)
"""


def test_mirrored_strategy_matches_one_device(tmp_path):
    """One SGD step on a batch of 256, on one CPU and split over two logical CPUs (MirroredStrategy): the same
    examples are attacked with the same random draws and the loss is scaled for the replicas, so the weights
    agree to the rounding of the gradients' all-reduce (measured: ≤ 1e-8). Over several steps that rounding can flip a near-tie between
    two logits in PGD₂'s margin loss and change an example (measured after four steps of 128: 2e-4 for PGD₂,
    ≤ 1e-8 for the one-step attacks), which is why one step is compared."""
    attacks_ = ["step_ll", "fgsm_rs", "pgd2", "smooth_pgd2", "smooth_pgd2_latent", "smooth_ddn"]
    out = tmp_path / "weights.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED, str(out), *attacks_], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    weights = np.load(out)
    for attack in attacks_:
        for i in range(8):
            one, two = weights[f"{attack}/one/{i}"], weights[f"{attack}/two/{i}"]
            np.testing.assert_allclose(two, one, atol=1e-6, rtol=0, err_msg=f"{attack} weight {i}")
    # and the attack mattered: the trainings differ between attacks
    assert np.abs(weights["step_ll/one/0"] - weights["smooth_pgd2/one/0"]).max() > 1e-4


def test_attacked_positions_are_those_of_one_device():
    for batch, fraction in [(128, 0.5), (128, 0.25), (100, 1.0), (64, 0.3)]:
        whole = adversarial_positions(batch, fraction)
        assert len(whole) == int(np.floor(batch * fraction + 1e-9))
        halves = np.concatenate([adversarial_positions(batch // 2, fraction) + h * (batch // 2) for h in (0, 1)])
        if (batch // 2 * fraction).is_integer():
            np.testing.assert_array_equal(halves, whole)


# --------------------------------------------------------------------------- the loop it replaced (step l.l)
class _ReferenceDraws(AdversarialTraining):
    """Step l.l with the reference loop's choices: the first half of each batch attacked, with its ε draws."""

    def __init__(self, *args, epsilons, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference_epsilons = epsilons  # (steps, k)

    def attacked_positions(self, batch):
        return np.arange(int(round(self.params["fraction"] * batch)))

    def step_ll_epsilons(self, global_positions):
        return tf.gather(tf.constant(self.reference_epsilons), self.optimizer.iterations)


def test_step_ll_through_the_wrapper_is_the_old_loop(fashion_train, fashion_test):
    """Given the old loop's random choices (which half, which ε), one epoch of step l.l through Keras fit ends
    at the old loop's weights, so at its accuracy; with its own draws it trains the same way statistically
    (docs/results.md: 6 epochs, test accuracy of both)."""
    x, y = fashion_train.images[:6400], fashion_train.labels[:6400]
    reference = reference_train_c4(x, y, epochs=1, seed=0, adversarial_training=True)

    steps, k = 50, 64
    generator = tf.random.Generator.from_seed(0)  # the reference loop's, drawn in its order
    epsilons = np.stack([generator.uniform((k, 1, 1, 1), 0.0, 0.3).numpy().reshape(k) for _ in range(steps)])
    keras.utils.set_random_seed(0)
    trainer = compiled(_ReferenceDraws(c4(), "step_ll", epsilons=epsilons))
    order = np.random.default_rng(0).permutation(len(x))
    trainer.fit(x[order], y[order], batch_size=128, epochs=1, shuffle=False, verbose=0)

    for ours, theirs in zip(weights_of(trainer.classifier), weights_of(reference)):
        np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)  # measured: bitwise equal here
    ours, theirs = (accuracy(m, fashion_test.images, fashion_test.labels) for m in (trainer.classifier, reference))
    assert abs(ours - theirs) <= 0.005, (ours, theirs)
    assert theirs > 0.6  # a trained classifier


def test_clean_training_is_the_old_loop_and_resumes_exactly(fashion_train, tmp_path):
    """train_c4 without an attack reproduces the old loop bit for bit (the cached C4 and the tests' C4 are
    unchanged); a training killed after its first epoch resumes to the weights of an uninterrupted one."""
    x, y = fashion_train.images[:2560], fashion_train.labels[:2560]
    for ours, theirs in zip(weights_of(train_c4(x, y, epochs=2)), weights_of(reference_train_c4(x, y, epochs=2))):
        np.testing.assert_array_equal(ours, theirs)
    straight = train_c4(x, y, epochs=2, train_attack="pgd2")
    resume = str(tmp_path / "resume")
    first = train_c4(x, y, epochs=1, train_attack="pgd2", resume_dir=resume)
    assert sorted(os.listdir(resume)) == ["latest.weights.h5", "settings.json"]
    resumed = train_c4(x, y, epochs=2, train_attack="pgd2", resume_dir=resume)
    for a, b in zip(weights_of(straight), weights_of(resumed)):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(weights_of(first), weights_of(resumed)))
    # the state of another training is never resumed from
    with pytest.raises(
        ValueError, match=r"holds the state of another training \(differs in \['train_attack', 'train_params'\]\)"
    ):
        train_c4(x, y, epochs=3, train_attack="step_ll", resume_dir=resume)


# ------------------------------------------------------------------------------------------------ bad options
def softmax_c4():
    return keras.Sequential([c4(), keras.layers.Softmax()])


@pytest.mark.parametrize(
    "attack, params, message",
    [
        ("pgd", {}, "train_attack='pgd': expected one of ['step_ll', 'fgsm_rs', 'pgd2'"),
        ("pgd2", {"epsilon": 0.0}, "train_attack=pgd2: epsilon=0.0: must be positive"),
        ("smooth_pgd2", {"iterations": 0}, "train_attack=smooth_pgd2: iterations=0: must be at least 1"),
        ("step_ll", {"fraction": 0.0}, "fraction=0.0: must be in (0, 1]"),
        ("fgsm_rs", {"weight": -1.0}, "weight=-1.0: must be positive"),
        ("smooth_ddn", {"alpha": 1.0}, "alpha=1.0: must be in [0, 1)"),
        ("pgd2", {"alpha": 0.9}, "train_attack=pgd2: takes no option 'alpha'"),
        ("smooth_pgd2", {"solver": "lu"}, "solver='lu': expected one of"),
    ],
)
def test_bad_training_options_are_refused_before_training(attack, params, message, tmp_path):
    with pytest.raises(ValueError) as raised:
        AdversarialTraining(c4(), attack, **params)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    resume = tmp_path / "resume"
    with pytest.raises(ValueError, match="expected one of|must be|takes no option"):
        train_c4(np.zeros((8, 28, 28, 1), np.float32), np.arange(8) % 2, epochs=1, batch_size=4,
                 train_attack=attack, train_params=params, resume_dir=str(resume))  # fmt: skip
    assert not resume.exists()  # refused before the first epoch


def test_bad_batches_are_refused_when_the_step_is_traced(fashion_train):
    """One-hot labels, 8-bit images and a share that attacks nobody: one ValueError each, not a wrong training."""
    x, y = fashion_train.images[:256], fashion_train.labels[:256]
    cases = [
        ("pgd2", {}, x, np.eye(10, dtype=np.int64)[y], "y: expected integer class labels of shape (B,) or (B, 1)"),
        ("pgd2", {}, (x * 255).astype(np.uint8), y, "x: expected float images in [0, 1], got uint8"),
        ("step_ll", {"fraction": 0.005}, x, y, "fraction=0.005: attacks no example of a batch of 128"),
    ]
    for attack, params, images, labels, message in cases:
        trainer = compiled(AdversarialTraining(c4(), attack, **params))
        with pytest.raises(ValueError, match=re.escape(message)):
            trainer.fit(images, labels, batch_size=128, epochs=1, verbose=0)


def test_column_labels_and_sample_weights_are_taken(fashion_train):
    """(B, 1) labels train exactly as (B,) ones; sample weights multiply the mix's weights: all zero, one SGD
    step changes nothing; zero for class 0, it is the step of the same batch whose class-0 examples count 0."""
    x, y = fashion_train.images[:128], fashion_train.labels[:128]

    def one_step(labels, sample_weight=None):
        keras.utils.set_random_seed(0)
        trainer = compiled(AdversarialTraining(c4(), "step_ll"), keras.optimizers.SGD(0.1))
        start = weights_of(trainer.classifier)
        trainer.fit(x, labels, sample_weight=sample_weight, batch_size=128, epochs=1, shuffle=False, verbose=0)
        return start, weights_of(trainer.classifier)

    start, plain = one_step(y)
    for a, b in zip(plain, one_step(y[:, None])[1]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(start, one_step(y, np.zeros(128, np.float32))[1]):
        np.testing.assert_array_equal(a, b)
    weighted = one_step(y, np.where(y == 0, 0.0, 1.0).astype(np.float32))[1]
    assert max(np.abs(a - b).max() for a, b in zip(plain, weighted)) > 1e-6  # class 0 no longer counts


def test_a_classifier_with_probabilities_or_no_input_shape_is_refused():
    with pytest.raises(ValueError, match="its outputs are probabilities .* remove the final softmax"):
        AdversarialTraining(softmax_c4(), "pgd2")
    unbuilt = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match=r"needs a declared \(H, W, C\) image input"):
        AdversarialTraining(unbuilt, "pgd2")
    with pytest.raises(ValueError, match="seed=-1: expected an integer >= 0"):
        AdversarialTraining(c4(), "pgd2", seed=-1)
