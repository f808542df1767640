"""The experiment scripts' common flags, and the one place a :class:`~smoothadv_tf.config.RunConfig` is built
from them (:func:`config_from_flags`).

With :func:`smoothadv_tf.cli.run_script` (which parses them), this is the only library module that reads absl's
``FLAGS``; nothing in the library imports either. The scripts
call ``config = experiment.config_from_flags()`` after parsing, then the library with explicit arguments:
:mod:`smoothadv_tf.runner` (load the data and model, run), :mod:`smoothadv_tf.report` (tables, plots),
:mod:`smoothadv_tf.records` (run identity, records). Outputs go to
``<output_dir>/<experiment>/<dataset>-<model>/<protocol>/`` (``RunConfig.output_path``).

The functions below the flags (``load_model``, ``run``, ``batch_size``, ...) are the flag-reading forms this
module offered before the split, kept for existing callers: each builds the RunConfig and calls the library.
"""

from __future__ import annotations

import os

from absl import flags

from smoothadv_tf import config as config_lib
from smoothadv_tf import devices, presets, records, runner
from smoothadv_tf.cli import run_script  # noqa: F401 - the scripts' entry point
from smoothadv_tf.config import (  # noqa: F401 - re-exported: they were defined here before the split
    KERAS_APPLICATIONS,
    MODEL_NAMES,
    MODELS_DIR,
    RunConfig,
    _parse_param,  # noqa: F401
    c4_cache_path,
    canonical_model,
    check_attacks,
    check_c4_file,
    check_writable,
    model_tag,
)
from smoothadv_tf.config import model_problem as model_flag_problem
from smoothadv_tf.errors import ConfigError
from smoothadv_tf.records import (  # noqa: F401 - re-exported: they were defined here before the split
    claim_run,
    dataset_fingerprint,
    identity_differences,
    model_fingerprint,
    read_run_identity,
    recorded_params,
    run_id,
)
from smoothadv_tf.report import report, subset_dir  # noqa: F401
from smoothadv_tf.runner import BUDGET_FRACTION, SMALL_IMAGE_BATCH, SMALL_IMAGE_PIXELS, records_of  # noqa: F401

FLAGS = flags.FLAGS


def _check_model_flag(value: str) -> bool:
    problem = model_flag_problem(value)
    if problem:
        raise flags.ValidationError(problem)
    return True


def _check_devices_flag(value: list[str]) -> bool:
    try:
        devices.parse_devices(value)
    except ValueError as e:
        raise flags.ValidationError(str(e)) from None
    return True


def define_common_flags(default_attacks=presets.PAPER_ATTACKS, default_num_images=1000) -> None:
    """Define the flags every experiment script shares: the fields of :class:`~smoothadv_tf.config.RunConfig`."""
    flags.DEFINE_enum("dataset", "fashion_mnist", list(config_lib.DATASETS), "dataset")
    flags.DEFINE_string("data_dir", None, "dataset directory (IDX files, NIPS-17 PNGs + CSV, or image folder)")
    flags.DEFINE_string(
        "model",
        "c4",
        f"model to attack: one of {list(config_lib.MODEL_NAMES)}; keras:<Name> (a keras.applications classifier, "
        f"Name in {list(config_lib.KERAS_APPLICATIONS)}; --checkpoint: its weights file, default the ImageNet weights); "
        "savedmodel:<dir> (a SavedModel taking [0, 1] images, as TF-Hub classifiers do)",
    )
    flags.register_validator("model", _check_model_flag)
    flags.DEFINE_string("checkpoint", None, "checkpoint: .keras file for C4, slim .ckpt prefix for ImageNet models")
    flags.DEFINE_list("attacks", list(default_attacks), f"comma list from {list(presets.ATTACK_NAMES)}")
    flags.DEFINE_enum("preset", None, list(presets.PRESETS), "attack parameters (default: from the dataset)")
    flags.DEFINE_enum(
        "protocol",
        presets.DEFAULT_PROTOCOL,
        list(presets.PROTOCOLS),
        "how C&W / sC&W run: 'paper' = the authors' code (1 binary-search step x 100 iterations at the §5.2 "
        "constant, margin-judged best iterate); 'strong' = 5 x 100 binary search over c",
    )
    flags.DEFINE_integer("num_images", default_num_images, "first N test images (before sharding)", lower_bound=1)
    flags.DEFINE_integer(
        "batch_size",
        None,
        "images per attack batch, split across --devices (default: 100 for MNIST-size images; for larger ones "
        "the most that fits --memory_budget_gb, logged)",
        lower_bound=1,
    )
    flags.DEFINE_float(
        "memory_budget_gb",
        None,
        "memory per device the attacks may use when --batch_size is not given (default: 80 % of TensorFlow's "
        "memory limit on the GPU, or of the memory available on the CPU)",
        lower_bound=0.01,
    )
    flags.DEFINE_string("output_dir", "results", "root of the results tree")
    flags.DEFINE_integer("num_shards", 1, "split the images into this many shards", lower_bound=1)
    flags.DEFINE_integer(
        "shard_index",
        None,
        "which shard this process runs (default: from the scheduler's $SLURM_ARRAY_TASK_ID or "
        "$JOB_COMPLETION_INDEX when --num_shards > 1, else 0)",
        lower_bound=0,
    )
    flags.DEFINE_integer("seed", 0, "random seed (C4 training)", lower_bound=0)
    flags.DEFINE_integer(
        "c4_epochs",
        config_lib.DEFAULT_C4_EPOCHS,
        "training epochs of a C4 trained here (part of its cache name)",
        lower_bound=1,
    )
    flags.DEFINE_enum(
        "train_attack",
        None,
        list(presets.TRAIN_ATTACKS),
        "--model=c4_adv trained here: the training attack (default step_ll, the paper's; its cache name and the "
        "run identity hold it)",
    )
    flags.DEFINE_list(
        "train_params",
        [],
        "--model=c4_adv trained here: its training budget over the dataset's preset as key=value, e.g. "
        "epsilon=2,iterations=7,fraction=0.5,weight=1 (presets.TRAINING_PRESETS)",
    )
    flags.DEFINE_list(
        "devices",
        [],
        "devices that run the attacks, e.g. GPU:0,GPU:1 (default: every visible GPU, else the CPU); several "
        "devices split each batch with tf.distribute.MirroredStrategy. CPU:0,CPU:1 splits the CPU into logical "
        "devices (to try the multi-device path without GPUs)",
    )
    flags.register_validator("devices", _check_devices_flag)
    flags.DEFINE_boolean(
        "tensorboard",
        True,
        "write TensorBoard event files into the run folder's tb/ (summary scalars and the operating "
        "characteristic, a few adversarial / perturbation / magnified images); --notensorboard skips them",
    )
    flags.DEFINE_string(
        "tensorboard_dir",
        None,
        "root of the TensorBoard event files instead of <run folder>/tb: each run writes under its own path "
        "(<tensorboard_dir>/<experiment>/<dataset>-<model>/<protocol>)",
    )
    flags.DEFINE_boolean(
        "trace_iterations",
        False,
        "also record C&W / sC&W / DDN / sDDN / FMN / sFMN's batch-mean loss, distortion and share adversarial at "
        "every iteration of the first batch (TensorBoard: tb/trace/<attack>)",
    )
    flags.DEFINE_list(
        "attack_params",
        [],
        "preset overrides as key=value, applied to every attack taking the key, "
        "e.g. iterations=20,binary_search_steps=3,cg_iterations=30; budgets by norm: epsilon_linf / step_linf "
        "(FGSM, I-FGSM), epsilon_l2 / step_l2 (the PGD2 family; a plain epsilon / step over both is refused)",
    )


def config_from_flags() -> RunConfig:
    """The RunConfig of the parsed common flags: checked (ConfigError, one line) before any data or model is
    loaded; the shard index from --shard_index or the scheduler (:func:`shard_index_and_source`)."""
    index, source = shard_index_and_source()
    for flag in ("train_attack", "train_params"):  # before the budget is parsed against an attack
        if FLAGS[flag].present:
            config_lib.check_training_target(FLAGS.model, FLAGS.checkpoint, f"--{flag}")
    if not 0 <= index < FLAGS.num_shards:
        raise ConfigError(f"--num_shards={FLAGS.num_shards}, {source}={index}: need 0 <= index < shards")
    return RunConfig(
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        model=FLAGS.model,
        checkpoint=FLAGS.checkpoint,
        attacks=tuple(FLAGS.attacks),
        preset=FLAGS.preset,
        protocol=FLAGS.protocol,
        num_images=FLAGS.num_images,
        batch_size=FLAGS.batch_size,
        memory_budget_gb=FLAGS.memory_budget_gb,
        output_dir=FLAGS.output_dir,
        num_shards=FLAGS.num_shards,
        shard_index=index,
        seed=FLAGS.seed,
        c4_epochs=FLAGS.c4_epochs,
        devices=tuple(FLAGS.devices),
        attack_params=config_lib.parse_attack_params(FLAGS.attack_params, FLAGS.attacks),
        train_attack=FLAGS.train_attack,
        train_params=config_lib.parse_train_params(
            FLAGS.train_params, FLAGS.train_attack or config_lib.DEFAULT_TRAIN_ATTACK
        ),
        tensorboard=FLAGS.tensorboard,
        tensorboard_dir=FLAGS.tensorboard_dir,
        trace_iterations=FLAGS.trace_iterations,
    )


def print_tensorboard_hint(config: RunConfig, out_dir: str) -> None:
    """Say where the run's TensorBoard events are and how to look at them (nothing with --notensorboard)."""
    path = config.tensorboard_path(out_dir)
    if path is not None:
        print(f"TensorBoard events in {path}: tensorboard --logdir {path} (pip install 'smoothadv_tf[tensorboard]')")


def validate_common_flags() -> RunConfig:
    """Check the common flags (what their parsers cannot) before any data or model is loaded; the RunConfig."""
    return config_from_flags()


SCHEDULER_INDEX = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")  # Slurm job arrays, Kubernetes Indexed Jobs


def shard_index_and_source() -> tuple[int, str]:
    """This process's shard and where it came from: --shard_index, else (with --num_shards > 1) the scheduler's
    task index — Slurm's array task id (the array must be 0..N-1: resubmitting `--array=5` then reruns shard 5),
    or Kubernetes' completion index — else 0."""
    if FLAGS.shard_index is not None:
        return FLAGS.shard_index, "--shard_index"
    if FLAGS.num_shards > 1:
        for name in SCHEDULER_INDEX:
            value = os.environ.get(name)
            if value is None:
                continue
            try:
                index = int(value)
            except ValueError:
                raise ConfigError(f"${name}={value!r}: not an integer shard index") from None
            return index, f"${name}"
        raise ConfigError(
            f"--num_shards={FLAGS.num_shards} needs --shard_index (or a scheduler's ${' / $'.join(SCHEDULER_INDEX)})"
        )
    return 0, "--shard_index"


# ---------------------------------------------------------------- the flag-reading forms, for existing callers
def shard_index() -> int:
    """This process's shard (:func:`shard_index_and_source`)."""
    return shard_index_and_source()[0]


def attack_overrides() -> dict:
    """--attack_params, typed and checked against --attacks, --preset and --protocol (``RunConfig.attack_params``)."""
    overrides = config_lib.parse_attack_params(FLAGS.attack_params, FLAGS.attacks)
    config_lib.check_attack_params(FLAGS.attacks, overrides, preset_for(FLAGS.dataset), FLAGS.protocol)
    return overrides


def preset_for(dataset: str) -> str:
    """--preset, else `dataset`'s (:func:`smoothadv_tf.config.default_preset`)."""
    return FLAGS.preset or config_lib.default_preset(dataset)


def c4_epochs() -> int:
    """--c4_epochs where the script defines the common flags, else the standard 6."""
    return FLAGS.c4_epochs if "c4_epochs" in FLAGS else config_lib.DEFAULT_C4_EPOCHS


def strategy():
    """The tf.distribute strategy of --devices where the script defines it, else of the default devices."""
    return runner.devices_placement(tuple(FLAGS.devices) if "devices" in FLAGS else ())[1]


def device_scope():
    """The scope of --devices' strategy (:func:`smoothadv_tf.runner.strategy_scope`)."""
    return runner.strategy_scope(strategy())


def batch_size(model, dataset) -> int:
    """The attack batch size of the flags' run (:func:`smoothadv_tf.runner.batch_size`)."""
    return runner.batch_size(config_from_flags(), model, dataset)


def load_data(dataset: str, image_size: int | None = None):
    """The test split of `dataset` from --data_dir (photos resized to `image_size`, default --model's side);
    then the devices are checked (:func:`smoothadv_tf.runner.load_data`)."""
    from smoothadv_tf import data as data_lib

    size = image_size or config_lib.image_size_for(FLAGS.model)
    loaded = data_lib.load_dataset(dataset, FLAGS.data_dir, "test", size)
    strategy()
    return loaded


def load_model(name: str, dataset: str, checkpoint: str | None = None, seed: int = 0, flag: str = "--checkpoint"):
    """:func:`smoothadv_tf.models.loading.load_model` with --c4_epochs, --data_dir and --devices where the script
    defines them."""
    from smoothadv_tf.models.loading import load_model as load

    chosen = strategy()  # first: a device this machine lacks is refused before any training
    data_dir = FLAGS.data_dir if "data_dir" in FLAGS else None
    return load(name, dataset, checkpoint, seed, epochs=c4_epochs(), data_dir=data_dir, strategy=chosen, flag=flag)


def check_fits(model, dataset, what: str) -> None:
    """Refuse a model that cannot take --dataset's images (:func:`smoothadv_tf.models.loading.check_fits`)."""
    from smoothadv_tf.models.loading import check_fits as check

    check(model, dataset, FLAGS.dataset, what)


def fit_labels(model, dataset):
    """`dataset` with labels in the model's class space (:func:`smoothadv_tf.models.loading.fit_labels`)."""
    from smoothadv_tf.models.loading import fit_labels as fit

    return fit(model, dataset, FLAGS.dataset, FLAGS.model)


def output_dir(experiment: str, dataset: str, model: str, protocol: str | None = None) -> str:
    """The run folder under --output_dir (:func:`smoothadv_tf.config.output_path`)."""
    return config_lib.output_path(FLAGS.output_dir, experiment, dataset, model, protocol or FLAGS.protocol)


def records_path(out_dir: str) -> str:
    """This process's records file in `out_dir` (:meth:`smoothadv_tf.config.RunConfig.records_path`)."""
    return config_from_flags().records_path(out_dir)


def run_identity(experiment: str, dataset, model, *, single_run=False, defaults=None, judges=None) -> dict:
    """The flags' run identity (:func:`smoothadv_tf.records.run_identity`)."""
    return records.run_identity(
        config_from_flags(), experiment, dataset, model, single_run=single_run, defaults=defaults, judges=judges
    )


def run(experiment: str, model, dataset, **options):
    """:func:`smoothadv_tf.runner.run` with the RunConfig of the flags."""
    return runner.run(config_from_flags(), experiment, model, dataset, **options)


def __getattr__(name: str):  # TensorFlow-bound names, imported when first used (the flags load without it)
    if name in ("load_c4", "load_foreign_model"):
        from smoothadv_tf.models import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
