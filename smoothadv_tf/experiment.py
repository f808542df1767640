"""What the experiment scripts share: the common flags, model loading and the output layout.

Outputs go to ``<output_dir>/<experiment>/<dataset>-<model>/``: ``records.jsonl`` (or one file per shard),
``summary.json``, ``table.md``, ``table.csv`` and ``operating_characteristic.png``.
"""

from __future__ import annotations

import inspect
import os

from absl import flags, logging

from smoothadv_tf import attacks as attacks_lib
from smoothadv_tf import data as data_lib
from smoothadv_tf import evaluation

FLAGS = flags.FLAGS
MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
MODEL_NAMES = ("c4", "c4_adv", "inception_v3", "adv_inception_v3", "resnet_v2_50")


def define_common_flags(default_attacks=tuple(attacks_lib.ATTACKS), default_num_images=1000) -> None:
    flags.DEFINE_enum("dataset", "fashion_mnist", ["mnist", "fashion_mnist", "nips17", "folder"], "dataset")
    flags.DEFINE_string("data_dir", None, "dataset directory (IDX files, NIPS-17 PNGs + CSV, or image folder)")
    flags.DEFINE_enum("model", "c4", list(MODEL_NAMES), "model to attack")
    flags.DEFINE_string("checkpoint", None, "checkpoint: .keras file for C4, slim .ckpt prefix for ImageNet models")
    flags.DEFINE_list("attacks", list(default_attacks), f"comma list from {list(attacks_lib.ATTACKS)}")
    flags.DEFINE_enum("preset", None, list(attacks_lib.PRESETS), "attack parameters (default: from the dataset)")
    flags.DEFINE_integer("num_images", default_num_images, "first N test images (before sharding)")
    flags.DEFINE_integer("batch_size", 100, "images per attack batch")
    flags.DEFINE_string("output_dir", "results", "root of the results tree")
    flags.DEFINE_integer("num_shards", 1, "split the images into this many shards")
    flags.DEFINE_integer("shard_index", 0, "which shard this process runs")
    flags.DEFINE_integer("seed", 0, "random seed (C4 training)")
    flags.DEFINE_list(
        "attack_params",
        [],
        "preset overrides as key=value, applied to every attack taking the key, "
        "e.g. iterations=20,binary_search_steps=3,cg_iterations=30",
    )


def attack_overrides() -> dict:
    """Parse --attack_params (numbers become int/float, true/false booleans)."""
    out = {}
    for item in FLAGS.attack_params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--attack_params: {item!r} is not key=value")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    known = {p for fn in attacks_lib.ATTACKS.values() for p in inspect.signature(fn).parameters}
    unknown = sorted(set(out) - known)
    if unknown:
        raise ValueError(f"--attack_params: no attack takes {unknown}")
    return out


def preset_for(dataset: str) -> str:
    return FLAGS.preset or ("mnist" if dataset in ("mnist", "fashion_mnist") else "imagenet")


def check_attacks(names) -> list[str]:
    unknown = [a for a in names if a not in attacks_lib.ATTACKS]
    if unknown:
        raise ValueError(f"--attacks: unknown {unknown}; expected names from {list(attacks_lib.ATTACKS)}")
    return list(names)


def load_model(name: str, dataset: str, checkpoint: str | None = None, seed: int = 0):
    """A model with the [0,1] -> logits contract. C4 is trained once per dataset and cached under models/."""
    if name in ("c4", "c4_adv"):
        from smoothadv_tf.models import load_or_train_c4

        path = checkpoint or os.path.join(MODELS_DIR, f"{name}_{dataset}.keras")
        return load_or_train_c4(
            path,
            dataset,
            FLAGS.data_dir if dataset == "mnist" else None,
            adversarial_training=name == "c4_adv",
            seed=seed,
        )
    from smoothadv_tf.models import slim

    if checkpoint is None:
        default = os.path.join(MODELS_DIR, slim.CHECKPOINTS[name])
        raise ValueError(
            f"--model={name} needs --checkpoint (expected e.g. {default}; "
            "see models/README.md and scripts/download_checkpoints.py)"
        )
    return slim.build(name, checkpoint)


def load_data(dataset: str, image_size: int = 299):
    return data_lib.load_dataset(dataset, FLAGS.data_dir, "test", image_size)


def output_dir(experiment: str, dataset: str, model: str) -> str:
    return os.path.join(FLAGS.output_dir, experiment, f"{dataset}-{model}")


def records_path(out_dir: str) -> str:
    if FLAGS.num_shards == 1:
        return os.path.join(out_dir, "records.jsonl")
    return os.path.join(out_dir, f"records-shard{FLAGS.shard_index:04d}-of-{FLAGS.num_shards:04d}.jsonl")


def report(records, out_dir: str, title: str, evaluated_on: str = "self", suffix: str = "") -> str:
    """Write the tables and the operating characteristic; return the markdown table."""
    summary = evaluation.summarize(records, evaluated_on)
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
):
    """Run (or resume) this process's shard of an experiment from the common flags; return (records, out_dir).

    `defaults` are attack-parameter overrides of the experiment itself (--attack_params still wins). The
    records are None for a shard of several (merge them with scripts/merge_results.py)."""
    out_dir = output_dir(experiment, FLAGS.dataset, FLAGS.model)
    store = evaluation.RecordStore(records_path(out_dir))
    indices = evaluation.shard_indices(min(FLAGS.num_images, len(dataset)), FLAGS.num_shards, FLAGS.shard_index)
    evaluation.run_experiment(
        model,
        dataset,
        check_attacks(FLAGS.attacks),
        preset_for(FLAGS.dataset),
        store,
        indices,
        FLAGS.batch_size,
        single_run=single_run,
        evaluate_on=evaluate_on,
        save_images_dir=f"{out_dir}/images" if save_images else None,
        overrides={**(defaults or {}), **attack_overrides()},
    )
    if FLAGS.num_shards > 1:
        print(f"shard {FLAGS.shard_index}/{FLAGS.num_shards} done: {store.path}; merge with scripts/merge_results.py")
        return None, out_dir
    return store.records, out_dir
