"""What the experiment scripts share: the common flags, model loading, the output layout and run identity.

Outputs go to ``<output_dir>/<experiment>/<dataset>-<model>/<protocol>/``: ``run.json`` (the run's identity),
``records.jsonl`` (or one file per shard), ``summary.json``, ``table.md``, ``table.csv`` and
``operating_characteristic.png``.

A run is identified by everything that decides its results (:func:`run_identity`): dataset content, model name
and weights (a hash of the loaded values), seed, preset, protocol and every attack's parameters after overrides (not the number of
images: asking for more extends a run). The protocol is part of the path, so the two protocols never share a
folder; any other difference with the ``run.json`` already there is refused with a message saying what differs,
so a resume never mixes two runs. Every record carries the protocol and the run id.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from absl import app, flags, logging

from smoothadv_tf import data as data_lib
from smoothadv_tf import devices, evaluation, presets
from smoothadv_tf.cli import check_writable, run_script  # noqa: F401 - run_script: the scripts' entry point

FLAGS = flags.FLAGS
MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
MODEL_NAMES = ("c4", "c4_adv", "inception_v3", "adv_inception_v3", "resnet_v2_50")
# keras.applications classifiers and their input sides (= models.APPLICATIONS, without importing TensorFlow)
KERAS_APPLICATIONS = {"InceptionV3": 299, "ResNet50": 224, "MobileNetV2": 224, "EfficientNetB0": 224}


def model_flag_problem(value: str) -> str | None:
    """Why a --model value is not a model this project can load (None if it is)."""
    kind, sep, rest = value.partition(":")
    if not sep:
        return (
            None if value in MODEL_NAMES else f"expected one of {list(MODEL_NAMES)}, keras:<Name> or savedmodel:<dir>"
        )
    if kind == "keras":
        return None if rest in KERAS_APPLICATIONS else f"keras:<Name> with Name in {list(KERAS_APPLICATIONS)}"
    if kind == "savedmodel":
        return None if os.path.isdir(rest) else f"savedmodel:<dir>: {rest!r} is not a directory"
    return f"unknown model source {kind!r}: expected keras:<Name> or savedmodel:<dir>"


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


_STRATEGY: dict = {}


def strategy():
    """The tf.distribute strategy of --devices (built once): None — TensorFlow's default placement — when the
    flag is not given and there is at most one device, else a Mirrored (several) or OneDevice strategy."""
    if "strategy" not in _STRATEGY:
        names = devices.parse_devices(FLAGS.devices) if "devices" in FLAGS else []
        try:
            found = devices.configure(names)
        except ValueError as e:
            raise app.UsageError(f"--devices={','.join(FLAGS.devices)}: {e}") from None
        _STRATEGY["devices"] = found
        if not names and len(found) == 1:
            _STRATEGY["strategy"] = None
        else:
            _STRATEGY["strategy"] = devices.strategy_for(found)
            logging.info("attacks run on %s (%s)", ", ".join(found), type(_STRATEGY["strategy"]).__name__)
    return _STRATEGY["strategy"]


SMALL_IMAGE_PIXELS = 4096  # up to 64 x 64 (MNIST-size): at most SMALL_IMAGE_BATCH images per batch
SMALL_IMAGE_BATCH = 100  # a batch is also what a killed run loses and a progress step: kept small
BUDGET_FRACTION = 0.8  # of a device's memory: room for TensorFlow's own workspace and fragmentation


def batch_size(model, dataset) -> int:
    """--batch_size if given; else the largest batch whose estimated peak memory (devices.estimate_bytes_per_image,
    calibrated by scripts/bench_memory.py; the dense smoothing of small images included) fits --memory_budget_gb
    on each device (default 80 % of the device's memory), at most 100 for images of up to 64x64 pixels; printed
    with the reasons."""
    if FLAGS.batch_size is not None:
        if FLAGS.memory_budget_gb is not None:
            logging.warning("--batch_size=%d given: --memory_budget_gb is not used", FLAGS.batch_size)
        return FLAGS.batch_size
    shape = dataset.images.shape[1:]
    chosen = strategy()
    replicas = chosen.num_replicas_in_sync if chosen is not None else 1
    names = _STRATEGY["devices"]
    if FLAGS.memory_budget_gb is not None:
        budget, source = FLAGS.memory_budget_gb * 2**30, f"--memory_budget_gb={FLAGS.memory_budget_gb:g}"
    else:
        sharing = len(names) if names[0].startswith("CPU") else 1
        total, where = devices.device_memory_bytes(names[0], sharing)
        budget = BUDGET_FRACTION * total
        source = f"{BUDGET_FRACTION:.0%} of {where} ({total / 2**30:.1f} GiB)"
    runs = {
        attack: evaluation.attack_runs(attack, preset_for(FLAGS.dataset), False, attack_overrides(), FLAGS.protocol)[0]
        for attack in check_attacks(FLAGS.attacks)
    }
    fits, why = devices.choose_batch_size(model, shape, runs, budget, replicas)
    images = max(1, min(FLAGS.num_images, len(dataset)))
    small = shape[0] * shape[1] <= SMALL_IMAGE_PIXELS
    size = min(fits, images, SMALL_IMAGE_BATCH) if small else min(fits, images)
    if size == fits:
        held = ""
    elif size == images:
        held = f" (all {images} images; the budget holds {fits})"
    else:
        held = f" (at most {SMALL_IMAGE_BATCH} for images of up to 64x64; the budget holds {fits})"
    message = f"--batch_size not given: batches of {size}{held} over {replicas} device(s), from {source}: {why}"
    logging.info("%s", message)
    if not small or size < SMALL_IMAGE_BATCH:  # the usual MNIST-size batch of 100 needs no announcement
        print(message, flush=True)
    return size


def device_scope():
    """The scope in which models are built so that their weights live on (are mirrored over) --devices."""
    import contextlib

    chosen = strategy()
    return chosen.scope() if chosen is not None else contextlib.nullcontext()


def canonical_model(value: str) -> str:
    """The --model value as recorded in the run identity (a SavedModel by its absolute path)."""
    kind, sep, rest = value.partition(":")
    return f"savedmodel:{os.path.abspath(rest)}" if kind == "savedmodel" and sep else value


def model_tag(value: str) -> str:
    """The --model value as a folder name: keras:ResNet50 -> keras-ResNet50, savedmodel:/a/b -> savedmodel-b-<hash>."""
    kind, sep, rest = value.partition(":")
    if not sep:
        return value
    if kind == "savedmodel":  # the folder name plus a hash of the absolute path: .../a/1 and .../b/1 differ
        path = os.path.abspath(rest)
        return f"savedmodel-{os.path.basename(path)}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    return f"{kind}-{rest}"


def define_common_flags(default_attacks=presets.PAPER_ATTACKS, default_num_images=1000) -> None:
    flags.DEFINE_enum("dataset", "fashion_mnist", ["mnist", "fashion_mnist", "nips17", "folder"], "dataset")
    flags.DEFINE_string("data_dir", None, "dataset directory (IDX files, NIPS-17 PNGs + CSV, or image folder)")
    flags.DEFINE_string(
        "model",
        "c4",
        f"model to attack: one of {list(MODEL_NAMES)}; keras:<Name> (a keras.applications classifier, "
        f"Name in {list(KERAS_APPLICATIONS)}; --checkpoint: its weights file, default the ImageNet weights); "
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
    flags.DEFINE_integer("c4_epochs", 6, "training epochs of a C4 trained here (part of its cache name)", lower_bound=1)
    flags.DEFINE_list(
        "devices",
        [],
        "devices that run the attacks, e.g. GPU:0,GPU:1 (default: every visible GPU, else the CPU); several "
        "devices split each batch with tf.distribute.MirroredStrategy. CPU:0,CPU:1 splits the CPU into logical "
        "devices (to try the multi-device path without GPUs)",
    )
    flags.register_validator("devices", _check_devices_flag)
    flags.DEFINE_list(
        "attack_params",
        [],
        "preset overrides as key=value, applied to every attack taking the key, "
        "e.g. iterations=20,binary_search_steps=3,cg_iterations=30; budgets by norm: epsilon_linf / step_linf "
        "(FGSM, I-FGSM), epsilon_l2 / step_l2 (the PGD2 family; a plain epsilon / step over both is refused)",
    )


def validate_common_flags() -> None:
    """Check what the flag bounds (checked while parsing) cannot, before any data or model is loaded."""
    index, source = shard_index_and_source()
    if not 0 <= index < FLAGS.num_shards:
        raise app.UsageError(f"--num_shards={FLAGS.num_shards}, {source}={index}: need 0 <= index < shards")
    attack_overrides()  # checks --attacks too
    if FLAGS.model in ("c4", "c4_adv") and FLAGS.dataset not in ("mnist", "fashion_mnist") and not FLAGS.checkpoint:
        raise app.UsageError(
            f"--model={FLAGS.model} --dataset={FLAGS.dataset}: a C4 is trained here only on mnist / fashion_mnist; "
            "pass --checkpoint with a model for these images"
        )
    if FLAGS.dataset in ("nips17", "folder") and FLAGS.data_dir is None:
        raise app.UsageError(f"--dataset={FLAGS.dataset} needs --data_dir")
    check_writable("--output_dir", FLAGS.output_dir)
    check_c4_file("--checkpoint", FLAGS.checkpoint, FLAGS.model)
    kind, _, name = FLAGS.model.partition(":")
    if kind == "keras" and FLAGS.dataset == "nips17" and KERAS_APPLICATIONS[name] != 299:
        raise app.UsageError(
            f"--dataset=nips17 holds 299x299 images and --model={FLAGS.model} takes "
            f"{KERAS_APPLICATIONS[name]}x{KERAS_APPLICATIONS[name]}: use --dataset=folder (resized) or a 299 model"
        )
    if FLAGS.model.startswith("keras:") and FLAGS.checkpoint and not os.path.isfile(FLAGS.checkpoint):
        raise app.UsageError(f"--checkpoint={FLAGS.checkpoint}: no such weights file for --model={FLAGS.model}")
    if FLAGS.data_dir is not None and not os.path.isdir(FLAGS.data_dir):  # the files in it: when it is read
        raise app.UsageError(f"--data_dir={FLAGS.data_dir}: no such directory")


def check_c4_file(flag: str, path: str | None, model: str) -> None:
    """A given C4 checkpoint must be an existing file (checked before anything is loaded)."""
    if path is not None and model in ("c4", "c4_adv") and not os.path.isfile(path):
        raise app.UsageError(f"{flag}={path}: no such file")


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
                raise app.UsageError(f"${name}={value!r}: not an integer shard index") from None
            return index, f"${name}"
        raise app.UsageError(
            f"--num_shards={FLAGS.num_shards} needs --shard_index (or a scheduler's ${' / $'.join(SCHEDULER_INDEX)})"
        )
    return 0, "--shard_index"


def shard_index() -> int:
    return shard_index_and_source()[0]


def attack_overrides() -> dict:
    """Parse --attack_params into typed values (each key as the selected attacks that take it expect: int,
    float, true/false, or one of its choices), refusing keys none of the selected attacks take and values of
    the wrong type or out of range (attacks.check_params) with a UsageError."""
    selected = check_attacks(FLAGS.attacks)
    out = {}
    for item in FLAGS.attack_params:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise app.UsageError(f"--attack_params: {item!r} is not key=value")
        takers = [a for a in selected if presets.override_type(a, key) is not None]
        if not takers:
            raise app.UsageError(f"--attack_params: {key}: none of the selected attacks {selected} takes it")
        out[key] = _parse_param(key, text, presets.override_type(takers[0], key))
    try:  # epsilon / step mean an L∞ size to FGSM and I-FGSM, an L2 size to the PGD₂ family
        presets.check_override_keys(selected, out)
    except ValueError as e:
        raise app.UsageError(f"--attack_params: {e}") from None
    for attack in selected:
        for params in evaluation.attack_runs(attack, preset_for(FLAGS.dataset), False, out, FLAGS.protocol):
            try:
                presets.check_params(attack, params)
            except ValueError as e:
                raise app.UsageError(f"--attack_params: {e}") from None
    return out


def _parse_param(key: str, text: str, expected: type):
    try:
        if expected is bool:
            return {"true": True, "false": False}[text.lower()]
        if expected is int:
            return int(text)
        if expected is float:
            return float(text)
        return text
    except (KeyError, ValueError):
        kind = {bool: "true or false", int: "an integer", float: "a number"}[expected]
        raise app.UsageError(f"--attack_params: {key}={text}: expected {kind}") from None


def preset_for(dataset: str) -> str:
    return FLAGS.preset or ("mnist" if dataset in ("mnist", "fashion_mnist") else "imagenet")


def check_attacks(names) -> list[str]:
    if not names:
        raise app.UsageError(f"--attacks: empty; expected names from {list(presets.ATTACK_NAMES)}")
    unknown = [a for a in names if a not in presets.ATTACK_NAMES]
    if unknown:
        raise app.UsageError(f"--attacks: unknown {unknown}; expected names from {list(presets.ATTACK_NAMES)}")
    return list(names)


def c4_cache_path(name: str, dataset: str, seed: int, epochs: int = 6) -> str:
    """Where a C4 trained here is cached: one file per dataset, training mode (c4 / c4_adv), seed and epochs."""
    suffix = "" if epochs == 6 else f"_epochs{epochs}"
    return os.path.join(MODELS_DIR, f"{name}_{dataset}_seed{seed}{suffix}.keras")


def c4_epochs() -> int:
    """--c4_epochs where the script defines the common flags, else the standard 6."""
    return FLAGS.c4_epochs if "c4_epochs" in FLAGS else 6


def load_model(name: str, dataset: str, checkpoint: str | None = None, seed: int = 0, flag: str = "--checkpoint"):
    """A model with the [0,1] -> logits contract. A C4 without --checkpoint is trained once per (dataset,
    mode, seed, epochs) and cached under models/; a given checkpoint must exist and hold finite weights."""
    chosen = strategy()  # first: a --devices that does not exist here is refused before any training
    if name in ("c4", "c4_adv") and checkpoint is None:
        from smoothadv_tf.models import load_or_train_c4

        path = c4_cache_path(name, dataset, seed, c4_epochs())
        # Trained (if not cached) outside any strategy, so the C4 does not depend on --devices; then loaded
        # into the devices' scope when there is one.
        model = load_or_train_c4(
            path,
            dataset,
            FLAGS.data_dir if dataset == "mnist" else None,
            adversarial_training=name == "c4_adv",
            seed=seed,
            epochs=c4_epochs(),
        )
        if chosen is None:
            return model
        checkpoint, flag = path, "the cached C4"
    with device_scope():
        return _load_model(name, checkpoint, flag)


def _load_model(name: str, checkpoint: str | None, flag: str):
    if name in ("c4", "c4_adv"):
        return load_c4(checkpoint, flag)
    kind, _, rest = name.partition(":")
    if kind in ("keras", "savedmodel"):
        return load_foreign_model(kind, rest, checkpoint, flag)
    from smoothadv_tf.models import slim

    if checkpoint is None:
        default = os.path.join(MODELS_DIR, slim.CHECKPOINTS[name])
        raise app.UsageError(
            f"--model={name} needs {flag} (expected e.g. {default}; "
            "see models/README.md and scripts/download_checkpoints.py)"
        )
    return slim.build(name, checkpoint)


def check_fits(model, dataset, what: str) -> None:
    """Refuse (DataError) images whose shape the model does not take, before anything is written."""
    from smoothadv_tf.data import DataError

    try:  # a wrapped model (slim, SavedModel) declares its input through the model inside
        expected = getattr(getattr(model, "inner", model), "input_shape", None)
    except (AttributeError, ValueError):  # a subclassed Keras model that was never built
        expected = None
    if isinstance(expected, list):
        expected = expected[0]
    if expected is None or len(dataset) == 0:
        return
    got = dataset.images.shape[1:]
    if len(expected) != 4 or any(e is not None and e != g for e, g in zip(expected[1:], got)):
        raise DataError(
            f"--dataset={FLAGS.dataset}: images are {'x'.join(map(str, got))}, but --model={what} takes "
            f"{'x'.join('?' if e is None else str(e) for e in expected[1:])}"
        )


def load_foreign_model(kind: str, what: str, weights: str | None, flag: str = "--checkpoint"):
    """keras:<Name> (weights file, or the ImageNet weights Keras downloads) or savedmodel:<dir>."""
    from smoothadv_tf.models import from_saved_model, keras_application
    from smoothadv_tf.models.slim import CheckpointError

    try:
        if kind == "keras":
            return keras_application(what, weights=weights or "imagenet")
        return from_saved_model(what)
    except Exception as e:  # noqa: BLE001 - Keras / TF raise many types for a missing download or a bad file
        source = f"{flag}={weights}" if weights else f"--model={kind}:{what}"
        raise CheckpointError(f"{source}: cannot load ({type(e).__name__}: {e})") from e


def load_c4(path: str, flag: str = "--checkpoint"):
    """A C4 (any Keras model) from a .keras file; CheckpointError naming `flag` for a missing, unreadable or
    non-finite one."""
    import keras

    from smoothadv_tf.models.slim import CheckpointError

    if not os.path.isfile(path):
        raise CheckpointError(f"{flag}={path}: no such file")
    try:
        model = keras.models.load_model(path)
    except Exception as e:  # noqa: BLE001 - Keras raises several types for a damaged archive
        raise CheckpointError(f"{flag}={path}: cannot load a Keras model ({type(e).__name__}: {e})") from e
    bad = [w.path for w in model.weights if not np.isfinite(np.asarray(w)).all()]
    if bad:
        raise CheckpointError(f"{flag}={path}: NaN or Inf in {', '.join(bad[:10])}")
    return model


def fit_labels(model, dataset):
    """The dataset with labels in the model's class convention. NIPS-17 labels are slim's (1001 classes, 0 =
    background); for a 1000-class model (keras.applications) they become 0..999. Labels of an image folder's
    labels.csv are taken as the attacked model's own class indices, and labels outside the model's classes are
    a DataError."""
    from smoothadv_tf import attacks as attacks_lib
    from smoothadv_tf.data import DataError, Dataset

    classes = int(attacks_lib.logits_of(model, dataset.images[:1]).shape[-1])
    labels = dataset.labels
    known = labels[labels >= 0]  # -1: unlabelled, attacked w.r.t. the model's own prediction
    if dataset.num_classes == classes or known.size == 0:
        return dataset
    if FLAGS.dataset == "nips17" and dataset.num_classes == 1001 and classes == 1000:
        if (known == 0).any():
            raise DataError("--dataset=nips17: label 0 (slim's background class) has no class in a 1000-class model")
        logging.info("NIPS-17 labels 1..1000 (slim's convention) mapped to the model's 0..999")
        return Dataset(dataset.images, np.where(labels >= 0, labels - 1, labels), dataset.ids, classes)
    if known.max() >= classes:
        raise DataError(
            f"--dataset={FLAGS.dataset}: labels go up to {int(known.max())}, but --model={FLAGS.model} has "
            f"{classes} classes"
        )
    return dataset


def load_data(dataset: str, image_size: int | None = None):
    """The test split; photo folders are resized to the model's input side (299, or a keras model's own). Read
    before TensorFlow is imported (a bad file is one line, fast); then the devices are checked."""
    if image_size is None:
        kind, _, name = FLAGS.model.partition(":")
        image_size = KERAS_APPLICATIONS[name] if kind == "keras" else 299
    loaded = data_lib.load_dataset(dataset, FLAGS.data_dir, "test", image_size)
    strategy()  # a --devices this machine lacks is refused before any model is loaded or trained
    return loaded


def output_dir(experiment: str, dataset: str, model: str, protocol: str | None = None) -> str:
    return os.path.join(FLAGS.output_dir, experiment, f"{dataset}-{model_tag(model)}", protocol or FLAGS.protocol)


# ------------------------------------------------------------------------------------------- run identity
def model_fingerprint(model) -> str:
    """Content hash of the model's weights as loaded: what was attacked, whatever file it came from (two shards
    that each trained their own C4 get different hashes even if they wrote the same cache file)."""
    weights = getattr(model, "weights", None)
    if not weights:
        return "unknown"
    h = hashlib.sha256()
    for w in weights:
        value = np.asarray(w)
        h.update(str(value.shape).encode())
        h.update(value.tobytes())
    return h.hexdigest()[:16]


def dataset_fingerprint(dataset) -> str:
    """Content hash of the images, labels and ids a run draws from."""
    h = hashlib.sha256()
    h.update(dataset.images.tobytes())
    h.update(dataset.labels.tobytes())
    h.update("\n".join(dataset.ids).encode())
    return h.hexdigest()[:16]


def run_identity(experiment: str, dataset, model, *, single_run=False, defaults=None, judges=None) -> dict:
    """Everything that decides the results of this run (the flags, the data, the attacked model's weights),
    with every attack's parameter sets."""
    overrides = {**(defaults or {}), **attack_overrides()}
    preset = preset_for(FLAGS.dataset)
    return {
        "experiment": experiment,
        "dataset": FLAGS.dataset,
        "data": dataset_fingerprint(dataset),
        "model": canonical_model(FLAGS.model),
        "weights": model_fingerprint(model),
        "seed": FLAGS.seed,
        "preset": preset,
        "protocol": FLAGS.protocol,
        "single_run": bool(single_run),
        "judges": dict(judges or {}),
        "attacks": {
            a: evaluation.attack_runs(a, preset, single_run, overrides, FLAGS.protocol)
            for a in check_attacks(FLAGS.attacks)
        },
    }


def run_id(identity: dict) -> str:
    """Short id of a run's common identity (the attacks' parameters are checked one attack at a time)."""
    common = {k: v for k, v in identity.items() if k != "attacks"}
    return hashlib.sha256(json.dumps(common, sort_keys=True).encode()).hexdigest()[:12]


def identity_differences(recorded: dict, now: dict) -> list[str]:
    """What differs between a recorded run identity and this one; attacks only one of them has are fine."""
    diffs = [
        f"{key}: recorded {recorded.get(key)!r}, now {now.get(key)!r}"
        for key in sorted(set(recorded) | set(now))
        if key != "attacks" and recorded.get(key) != now.get(key)
    ]
    for attack, runs in now.get("attacks", {}).items():
        before = recorded.get("attacks", {}).get(attack)
        if before is not None and before != runs:
            changed = sorted(
                {k for old, new in zip(before, runs) for k in set(old) | set(new) if old.get(k) != new.get(k)}
            ) or ["number of target runs"]
            diffs.append(f"{attack} parameters {changed}")
    return diffs


def read_run_identity(path: str) -> dict:
    """A run.json, or RecordsError saying it is damaged."""
    try:
        with open(path) as f:
            identity = json.load(f)
    except (OSError, ValueError) as e:
        raise evaluation.RecordsError(f"{path}: not a readable run identity ({e})") from None
    needed = {"experiment", "dataset", "model", "protocol", "attacks", "weights", "data"}
    if not isinstance(identity, dict) or not needed <= set(identity):
        missing = sorted(needed - set(identity)) if isinstance(identity, dict) else "all"
        raise evaluation.RecordsError(f"{path}: not a run identity of this version (missing {missing})")
    return identity


def claim_run(out_dir: str, identity: dict) -> str:
    """Record the identity in out_dir/run.json, or check it against the one there; return the run id.
    A different run in the same folder is refused (exit 2) with what differs."""
    import fcntl

    path = os.path.join(out_dir, "run.json")
    os.makedirs(out_dir, exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # shards starting together: check and merge one at a time
        if os.path.exists(path):
            recorded = read_run_identity(path)
            diffs = identity_differences(recorded, identity)
            if diffs:
                raise app.UsageError(
                    f"{out_dir} holds another run ({'; '.join(diffs)}): pass another --output_dir to keep both, "
                    "or remove that folder"
                )
            identity = {**identity, "attacks": {**recorded.get("attacks", {}), **identity["attacks"]}}
        evaluation.atomic_write(path, json.dumps(identity, indent=2, sort_keys=True))
    return run_id(identity)


def recorded_params(out_dir: str, attack: str, target) -> dict:
    """The parameters a recorded run used for `attack` (at distortion target `target`), from its run.json."""
    path = os.path.join(out_dir, "run.json")
    if not os.path.exists(path):
        raise app.UsageError(f"{path} not found: run the experiment with the same flags first")
    runs = read_run_identity(path)["attacks"].get(attack)
    for params in runs or []:
        if target is None or params.get("epsilon") == target:
            return params
    raise app.UsageError(f"{path}: no recorded parameters for {attack} at target {target}")


def records_path(out_dir: str) -> str:
    if FLAGS.num_shards == 1:
        return os.path.join(out_dir, "records.jsonl")
    return os.path.join(out_dir, f"records-shard{shard_index():04d}-of-{FLAGS.num_shards:04d}.jsonl")


def report(records, out_dir: str, title: str, evaluated_on: str = "self", suffix: str = "") -> str:
    """Write the tables and the operating characteristic; return the markdown table. Records of fewer images
    than the folder holds (a smaller rerun, :func:`records_of`) get theirs under ``first<N>/``: the folder's own
    tables, over all its images, are left as they were."""
    summary = evaluation.summarize(records, evaluated_on)
    asked = {r["image_id"] for r in records}
    path = os.path.join(out_dir, "records.jsonl")
    if os.path.exists(path) and {r["image_id"] for r in evaluation.read_records(path)} - asked:
        out_dir = subset_dir(out_dir, len(asked))
    target_dir = os.path.join(out_dir, suffix) if suffix else out_dir
    table = evaluation.write_summary(summary, target_dir, title)
    evaluation.plot_operating_characteristic(
        records, os.path.join(target_dir, "operating_characteristic.png"), evaluated_on, title
    )
    logging.info("wrote %s", target_dir)
    return table


def run(
    experiment: str,
    model,
    dataset,
    *,
    single_run: bool = False,
    evaluate_on=None,
    save_images: bool = False,
    defaults: dict | None = None,
    judges: dict | None = None,
):
    """Run (or resume) this process's shard of an experiment from the common flags; return (records, out_dir).

    `defaults` are attack-parameter overrides of the experiment itself (--attack_params still wins); `judges`
    names the judged models' weights (for the run identity). The records are None for a shard of several
    (merge them with scripts/merge_results.py)."""
    check_fits(model, dataset, FLAGS.model)
    for judge_name, judge in (evaluate_on or {}).items():
        check_fits(judge, dataset, f"{FLAGS.model} judged on {judge_name}")
    out_dir = output_dir(experiment, FLAGS.dataset, FLAGS.model)
    identity = run_identity(experiment, dataset, model, single_run=single_run, defaults=defaults, judges=judges)
    dataset = fit_labels(model, dataset)  # after the identity, which hashes the files' own labels
    # The writer lock first (a second process on this folder is refused before it touches anything), then the
    # identity check, and only then the records file is read and repaired.
    lock = evaluation.writer_lock(records_path(out_dir))
    try:
        rid = claim_run(out_dir, identity)
    except BaseException:
        lock.close()
        raise
    indices = evaluation.shard_indices(min(FLAGS.num_images, len(dataset)), FLAGS.num_shards, shard_index())
    # a shard skips what the folder's merged records.jsonl already holds (an earlier run, an earlier merge)
    merged = os.path.join(out_dir, "records.jsonl") if FLAGS.num_shards > 1 else None
    with evaluation.RecordStore(records_path(out_dir), lock=lock, done_in=merged) as store:
        logging.info("run %s (protocol %s) in %s", rid, FLAGS.protocol, out_dir)  # once its records are readable
        evaluation.run_experiment(
            model,
            dataset,
            check_attacks(FLAGS.attacks),
            preset_for(FLAGS.dataset),
            store,
            indices,
            batch_size(model, dataset),
            single_run=single_run,
            evaluate_on=evaluate_on,
            save_images_dir=f"{out_dir}/images" if save_images else None,
            overrides={**(defaults or {}), **attack_overrides()},
            protocol=FLAGS.protocol,
            run_id=rid,
            strategy=strategy(),
        )
        if FLAGS.num_shards > 1 and not os.path.exists(store.path):  # a shard given no images (more shards than
            open(store.path, "a").close()  # images) ran all the same: its empty file says so to the merge
    if FLAGS.num_shards > 1:
        print(f"shard {shard_index()}/{FLAGS.num_shards} done: {store.path}; merge with scripts/merge_results.py")
        return None, out_dir
    return records_of(store.records, {dataset.ids[i] for i in indices}, store.path), out_dir


def records_of(records: list[dict], image_ids: set, path: str) -> list[dict]:
    """The records of the images this run was asked for (--num_images): the printed table covers those, and
    says so when the folder holds more (an earlier, larger run)."""
    held = {r["image_id"] for r in records}
    if held <= image_ids:
        return records
    print(
        f"{path} holds records of {len(held)} images; the tables below cover the {len(image_ids)} asked for "
        f"(--num_images={FLAGS.num_images}) and are written under {subset_dir(os.path.dirname(path), len(image_ids))}"
        "; the folder's own tables are left as they were",
        flush=True,
    )
    return [r for r in records if r["image_id"] in image_ids]


def subset_dir(out_dir: str, images: int) -> str:
    return os.path.join(out_dir, f"first{images}")
