"""Train C4 (paper §5.2) on MNIST or Fashion-MNIST, clean or adversarially (step l.l), and save it.

python scripts/train_mnist.py --dataset=fashion_mnist          # -> models/c4_fashion_mnist_seed0.keras
python scripts/train_mnist.py --adversarial_training --seed=1  # -> models/c4_adv_fashion_mnist_seed1.keras

The default output is the cache the experiment scripts load (one file per dataset, training mode and seed).
"""

import os

from absl import flags

from smoothadv_tf import data, experiment
from smoothadv_tf.cli import check_writable

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "fashion_mnist", ["mnist", "fashion_mnist"], "training data")
flags.DEFINE_string("data_dir", None, "directory of IDX files (default: the dataset's standard place)")
flags.DEFINE_integer("epochs", 6, "training epochs", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "batch size", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate")
flags.DEFINE_integer("seed", 0, "random seed")
flags.DEFINE_boolean("adversarial_training", False, "Kurakin et al. step l.l adversarial training")
flags.DEFINE_float(
    "adversarial_epsilon",
    0.3,
    "max ε of the one-step l.l examples (drawn uniformly in [0, ε])",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_float(
    "adversarial_fraction",
    0.5,
    "fraction of each batch replaced by adversarial examples",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.register_validator("learning_rate", lambda v: v > 0, "must be positive")
flags.DEFINE_string("output", None, "output .keras path (default models/c4[_adv]_<dataset>_seed<seed>.keras)")


def main(_):
    name = "c4_adv" if FLAGS.adversarial_training else "c4"
    output = FLAGS.output or experiment.c4_cache_path(name, FLAGS.dataset, FLAGS.seed)
    check_writable("--output", output)
    from smoothadv_tf.models import accuracy, train_c4  # TensorFlow, once the flags are checked

    train = data.load_dataset(FLAGS.dataset, FLAGS.data_dir, "train")
    test = data.load_dataset(FLAGS.dataset, FLAGS.data_dir, "test")
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
    experiment.run_script(main)
