"""Train C4 (paper §5.2) on MNIST or Fashion-MNIST, clean or adversarially, and save it.

python scripts/train_mnist.py --dataset=fashion_mnist          # -> models/c4_fashion_mnist_seed0.keras
python scripts/train_mnist.py --adversarial_training --seed=1  # step l.l -> models/c4_adv_fashion_mnist_seed1.keras
python scripts/train_mnist.py --adversarial_training --train_attack=smooth_pgd2   # against sPGD₂ (eq. 12)
python scripts/train_mnist.py --adversarial_training --train_params=epsilon=2,iterations=7 --train_attack=pgd2
python scripts/train_mnist.py --epochs=1                       # -> models/c4_fashion_mnist_seed0_epochs1.keras

Adversarial training runs smoothadv_tf.training.AdversarialTraining (Keras fit) against --train_attack (default
step_ll, the paper's) with the dataset's preset budget (presets.TRAINING_PRESETS) and --train_params over it.
The default output is exactly the cache the experiment scripts load for these settings (config.c4_cache_path:
one file per dataset, training attack and budget, seed and epochs). That name holds no batch size or learning
rate, so other values than the cache's (CACHE_HYPERPARAMETERS) need --output: a model trained otherwise never
takes the cache's place. A killed run resumes from its last finished epoch (<output>.resume/).
"""

from absl import app, flags

from smoothadv_tf import data, presets
from smoothadv_tf.cli import check_writable, run_script
from smoothadv_tf.config import DEFAULT_TRAIN_ATTACK, c4_cache_path, parse_train_params
from smoothadv_tf.errors import ConfigError

FLAGS = flags.FLAGS
# What the experiment scripts' cached C4 is trained with: train_c4's defaults (tests/test_train_script.py checks
# that they agree). The cache name does not hold them.
CACHE_HYPERPARAMETERS = {"batch_size": 128, "learning_rate": 1e-3}
flags.DEFINE_enum("dataset", "fashion_mnist", ["mnist", "fashion_mnist"], "training data")
flags.DEFINE_string("data_dir", None, "directory of IDX files (default: the dataset's standard place)")
flags.DEFINE_integer("epochs", 6, "training epochs (part of the cache name)", lower_bound=1)
flags.DEFINE_integer("batch_size", CACHE_HYPERPARAMETERS["batch_size"], "batch size", lower_bound=1)
flags.DEFINE_float("learning_rate", CACHE_HYPERPARAMETERS["learning_rate"], "Adam learning rate")
flags.DEFINE_integer("seed", 0, "random seed", lower_bound=0)
flags.DEFINE_boolean("adversarial_training", False, "adversarial training against --train_attack")
flags.DEFINE_enum(
    "train_attack",
    None,
    list(presets.TRAIN_ATTACKS),
    f"the training attack (with --adversarial_training; default {DEFAULT_TRAIN_ATTACK}, the paper's)",
)
flags.DEFINE_list(
    "train_params",
    [],
    "training budget over the dataset's preset as key=value, e.g. epsilon=2,iterations=7,fraction=0.5,weight=1 "
    "(with --adversarial_training; presets.TRAINING_PRESETS)",
)
flags.register_validator("learning_rate", lambda v: v > 0, "must be positive")
flags.DEFINE_string(
    "output",
    None,
    "output .keras path (default: the experiment scripts' cache for these settings, "
    "models/c4[_adv[_<attack>][_<budget hash>]]_<dataset>_seed<seed>[_epochs<n>].keras)",
)


def training() -> tuple[str | None, dict]:
    """(training attack, its budget overrides), checked; (None, {}) for clean training."""
    adversarial = FLAGS.adversarial_training
    idle = [f"--{k}" for k in ("train_attack", "train_params") if FLAGS[k].present and not adversarial]
    if idle:
        raise app.UsageError(f"{', '.join(idle)}: only used with --adversarial_training")
    if not adversarial:
        return None, {}
    attack = FLAGS.train_attack or DEFAULT_TRAIN_ATTACK
    try:
        params = parse_train_params(FLAGS.train_params, attack)
        presets.training_params(attack, FLAGS.dataset, **params)
    except ConfigError as e:  # already names the flag
        raise app.UsageError(str(e)) from None
    except ValueError as e:  # a value out of its domain
        raise app.UsageError(f"--train_params: {e}") from None
    return attack, params


def output_path(attack: str | None, params: dict) -> str:
    """--output, else the cache path the experiment scripts load for this dataset, training (`attack` with
    `params` over its budget), seed and epochs; UsageError for settings that path cannot tell apart from the
    cache's (no --output)."""
    if FLAGS.output is not None:
        if not FLAGS.output.endswith(".keras"):
            raise app.UsageError(f"--output={FLAGS.output}: must end in .keras (the Keras format it is saved in)")
        return FLAGS.output
    name = "c4_adv" if attack else "c4"
    path = c4_cache_path(name, FLAGS.dataset, FLAGS.seed, FLAGS.epochs, attack, params)
    other = [
        f"--{key}={FLAGS[key].value:g} (the cache's: {value:g})"
        for key, value in CACHE_HYPERPARAMETERS.items()
        if FLAGS[key].value != value
    ]
    if other:
        raise app.UsageError(
            f"{', '.join(other)}: the experiment scripts would load this model as their cached C4 {path}; "
            "pass --output to save it elsewhere"
        )
    return path


def main(_):
    attack, params = training()
    output = output_path(attack, params)
    check_writable("--output", output)
    train = data.load_dataset(FLAGS.dataset, FLAGS.data_dir, "train")
    if FLAGS.batch_size > len(train):
        raise app.UsageError(f"--batch_size={FLAGS.batch_size}: more than the {len(train)} training images")
    test = data.load_dataset(FLAGS.dataset, FLAGS.data_dir, "test")
    from smoothadv_tf.models import accuracy, save_c4, train_c4  # TensorFlow, once the flags and data are checked

    model = train_c4(
        train.images,
        train.labels,
        FLAGS.epochs,
        FLAGS.batch_size,
        FLAGS.learning_rate,
        FLAGS.seed,
        attack,
        params,
        dataset=FLAGS.dataset,
        resume_dir=output + ".resume",
    )
    save_c4(model, output)
    print(f"test accuracy {accuracy(model, test.images, test.labels):.4f}; saved {output}")


if __name__ == "__main__":
    run_script(main)
