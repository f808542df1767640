"""Train C4 (paper §5.2) on MNIST or Fashion-MNIST, clean or adversarially (step l.l), and save it.

python scripts/train_mnist.py --dataset=fashion_mnist          # -> models/c4_fashion_mnist_seed0.keras
python scripts/train_mnist.py --adversarial_training --seed=1  # -> models/c4_adv_fashion_mnist_seed1.keras
python scripts/train_mnist.py --epochs=1                       # -> models/c4_fashion_mnist_seed0_epochs1.keras

The default output is exactly the cache the experiment scripts load for these settings
(config.c4_cache_path: one file per dataset, training mode, seed and epochs). That name holds no batch size,
learning rate or adversarial ε / fraction, so other values than the cache's (CACHE_HYPERPARAMETERS) need
--output: a model trained otherwise never takes the cache's place.
"""

import os

from absl import app, flags

from smoothadv_tf import data
from smoothadv_tf.cli import check_writable, run_script
from smoothadv_tf.config import c4_cache_path

FLAGS = flags.FLAGS
# What the experiment scripts' cached C4 is trained with: train_c4's defaults (tests/test_train_script.py checks
# that they agree). The cache name does not hold them.
CACHE_HYPERPARAMETERS = {
    "batch_size": 128,
    "learning_rate": 1e-3,
    "adversarial_epsilon": 0.3,
    "adversarial_fraction": 0.5,
}
flags.DEFINE_enum("dataset", "fashion_mnist", ["mnist", "fashion_mnist"], "training data")
flags.DEFINE_string("data_dir", None, "directory of IDX files (default: the dataset's standard place)")
flags.DEFINE_integer("epochs", 6, "training epochs (part of the cache name)", lower_bound=1)
flags.DEFINE_integer("batch_size", CACHE_HYPERPARAMETERS["batch_size"], "batch size", lower_bound=1)
flags.DEFINE_float("learning_rate", CACHE_HYPERPARAMETERS["learning_rate"], "Adam learning rate")
flags.DEFINE_integer("seed", 0, "random seed", lower_bound=0)
flags.DEFINE_boolean("adversarial_training", False, "Kurakin et al. step l.l adversarial training")
flags.DEFINE_float(
    "adversarial_epsilon",
    CACHE_HYPERPARAMETERS["adversarial_epsilon"],
    "max ε of the one-step l.l examples (drawn uniformly in [0, ε]; with --adversarial_training)",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_float(
    "adversarial_fraction",
    CACHE_HYPERPARAMETERS["adversarial_fraction"],
    "fraction of each batch replaced by adversarial examples (with --adversarial_training)",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.register_validator("learning_rate", lambda v: v > 0, "must be positive")
flags.DEFINE_string(
    "output",
    None,
    "output .keras path (default: the experiment scripts' cache for these settings, "
    "models/c4[_adv]_<dataset>_seed<seed>[_epochs<n>].keras)",
)


def output_path() -> str:
    """--output, else the cache path the experiment scripts load for this dataset, mode, seed and epochs;
    UsageError for settings that path cannot tell apart from the cache's (no --output) or that do nothing."""
    adversarial = FLAGS.adversarial_training
    idle = [f"--{k}" for k in ("adversarial_epsilon", "adversarial_fraction") if FLAGS[k].present and not adversarial]
    if idle:
        raise app.UsageError(f"{', '.join(idle)}: only used with --adversarial_training")
    if FLAGS.output is not None:
        if not FLAGS.output.endswith(".keras"):
            raise app.UsageError(f"--output={FLAGS.output}: must end in .keras (the Keras format it is saved in)")
        return FLAGS.output
    name = "c4_adv" if adversarial else "c4"
    path = c4_cache_path(name, FLAGS.dataset, FLAGS.seed, FLAGS.epochs)
    other = [
        f"--{key}={FLAGS[key].value:g} (the cache's: {value:g})"
        for key, value in CACHE_HYPERPARAMETERS.items()
        if FLAGS[key].value != value and (adversarial or not key.startswith("adversarial_"))
    ]
    if other:
        raise app.UsageError(
            f"{', '.join(other)}: the experiment scripts would load this model as their cached C4 {path}; "
            "pass --output to save it elsewhere"
        )
    return path


def main(_):
    output = output_path()
    check_writable("--output", output)
    train = data.load_dataset(FLAGS.dataset, FLAGS.data_dir, "train")
    if FLAGS.batch_size > len(train):
        raise app.UsageError(f"--batch_size={FLAGS.batch_size}: more than the {len(train)} training images")
    test = data.load_dataset(FLAGS.dataset, FLAGS.data_dir, "test")
    from smoothadv_tf.models import accuracy, train_c4  # TensorFlow, once the flags and data are checked

    model = train_c4(
        train.images,
        train.labels,
        FLAGS.epochs,
        FLAGS.batch_size,
        FLAGS.learning_rate,
        FLAGS.seed,
        FLAGS.adversarial_training,
        FLAGS.adversarial_epsilon,
        FLAGS.adversarial_fraction,
    )
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    model.save(output + ".tmp.keras")
    os.replace(output + ".tmp.keras", output)
    print(f"test accuracy {accuracy(model, test.images, test.labels):.4f}; saved {output}")


if __name__ == "__main__":
    run_script(main)
