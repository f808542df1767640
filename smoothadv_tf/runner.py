"""Running an experiment: load its data and model, attack, and append every outcome to the run's records.

:func:`run` is what every experiment script does after reading its flags, and what a Python caller does with
a :class:`~smoothadv_tf.config.RunConfig`::

    config = RunConfig(dataset="fashion_mnist", model="c4", num_images=10, attacks=("fgsm", "pgd2"))
    dataset = runner.load_data(config)
    model = runner.load_model(config)
    records, out_dir = runner.run(config, "white_box", model, dataset)
    print(report.report(records, out_dir, "White box"))

A run (or resume) of one shard: the run identity is claimed in the folder's ``run.json``
(:func:`smoothadv_tf.records.claim_run`), the images are attacked in batches (:func:`run_experiment`), and each
batch's records are appended and fsynced before the next starts, so a killed run loses at most the batch in
flight and a rerun skips what is recorded.

Each attack record carries `seconds`: the wall-clock time of the attack call on its batch divided by the
images attacked in it (the first batch of a process includes tracing and compiling the loop). When the attacks
quantise (the default) they round x to 8 bits on entry; the clean record judges, and D and the perceptibility
fields (smoothness, ssim, psnr; psnr null = +inf, the image is the original) measure against, that rounded
image (AttackResult.original), so an off-grid image's rounding noise counts nowhere.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from smoothadv_tf import data as data_lib
from smoothadv_tf import devices, presets
from smoothadv_tf.config import DISTORTION_TARGETING, RunConfig, attack_runs
from smoothadv_tf.errors import ConfigError
from smoothadv_tf.records import RecordStore, claim_run, run_identity, shard_indices, writer_lock
from smoothadv_tf.report import save_pngs, subset_dir


def placement(config: RunConfig) -> tuple[list[str], object]:
    """The devices of ``config.devices`` and their strategy (:func:`devices_placement`)."""
    return devices_placement(config.devices)


def devices_placement(names) -> tuple[list[str], object]:
    """The devices named (none: the default ones) and their strategy (:func:`smoothadv_tf.devices.placement`),
    or a ConfigError naming --devices for one this machine lacks."""
    try:
        return devices.placement(names)
    except ValueError as e:
        raise ConfigError(f"--devices={','.join(names)}: {e}") from None


def device_scope(config: RunConfig):
    """The scope in which models are built so that their weights live on (are mirrored over) the devices."""
    return strategy_scope(placement(config)[1])


def strategy_scope(strategy):
    """``strategy.scope()``, or no scope for TensorFlow's default placement (None)."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def load_data(config: RunConfig):
    """The test split; photo folders are resized to the model's input side (299, or a keras model's own). Read
    before TensorFlow is imported (a bad file is one line, fast); then the devices are checked."""
    loaded = data_lib.load_dataset(config.dataset, config.data_dir, "test", config.image_size)
    placement(config)  # a device this machine lacks is refused before any model is loaded or trained
    return loaded


def load_model(config: RunConfig, name: str | None = None, checkpoint: str | None = None, flag: str = "--checkpoint"):
    """The model ``config`` attacks (``config.model``, from `checkpoint` if given, else ``config.checkpoint``),
    or another one (`name` from `checkpoint`, e.g. transfer's adversarially trained target, which never takes
    ``config.checkpoint``), on the run's devices (:func:`smoothadv_tf.models.loading.load_model`)."""
    strategy = placement(config)[1]  # first: a device that does not exist here is refused before any training
    from smoothadv_tf.models.loading import load_model as load

    if name is None:
        name, checkpoint = config.model, checkpoint if checkpoint is not None else config.checkpoint
    return load(
        name,
        config.dataset,
        checkpoint,
        config.seed,
        epochs=config.c4_epochs,
        data_dir=config.data_dir,
        strategy=strategy,
        flag=flag,
        **(
            {"train_attack": config.train_attack, "train_params": dict(config.train_params)}
            if name == config.model
            else {}
        ),
    )


SMALL_IMAGE_PIXELS = 4096  # up to 64 x 64 (MNIST-size): at most SMALL_IMAGE_BATCH images per batch
SMALL_IMAGE_BATCH = 100  # a batch is also what a killed run loses and a progress step: kept small
BUDGET_FRACTION = 0.8  # of a device's memory: room for TensorFlow's own workspace and fragmentation


def batch_size(config: RunConfig, model, dataset) -> int:
    """``config.batch_size`` if given; else the largest batch whose estimated peak memory
    (devices.estimate_bytes_per_image, calibrated by scripts/bench_memory.py; the dense smoothing of small
    images included) fits ``config.memory_budget_gb`` on each device (default 80 % of the device's memory), at
    most 100 for images of up to 64x64 pixels; printed with the reasons."""
    if config.batch_size is not None:
        if config.memory_budget_gb is not None:
            logging.warning("--batch_size=%d given: --memory_budget_gb is not used", config.batch_size)
        return config.batch_size
    shape = dataset.images.shape[1:]
    names, chosen = placement(config)
    replicas = chosen.num_replicas_in_sync if chosen is not None else 1
    if config.memory_budget_gb is not None:
        budget, source = config.memory_budget_gb * 2**30, f"--memory_budget_gb={config.memory_budget_gb:g}"
    else:
        sharing = len(names) if names[0].startswith("CPU") else 1
        total, where = devices.device_memory_bytes(names[0], sharing)
        budget = BUDGET_FRACTION * total
        source = f"{BUDGET_FRACTION:.0%} of {where} ({total / 2**30:.1f} GiB)"
    runs = {attack: config.attack_runs(attack)[0] for attack in config.attacks}
    fits, why = devices.choose_batch_size(model, shape, runs, budget, replicas)
    images = max(1, min(config.num_images, len(dataset)))
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


def run(
    config: RunConfig,
    experiment: str,
    model,
    dataset,
    *,
    single_run: bool = False,
    evaluate_on: dict | None = None,
    save_images: bool = False,
    defaults: dict | None = None,
    judges: dict | None = None,
    progress: bool = True,
):
    """Run (or resume) this process's shard of `experiment` as ``config`` says; return (records, out_dir).

    `defaults` are attack-parameter overrides of the experiment itself (``config.attack_params`` still wins);
    `evaluate_on` maps names to models the adversarial images are judged on instead of `model` (transfer),
    and `judges` names their weights (for the run identity). The records are those of the images asked for
    (:func:`records_of`); None for a shard of several (merge them with scripts/merge_results.py)."""
    from smoothadv_tf.models.loading import check_fits, fit_labels

    check_fits(model, dataset, config.dataset, config.model)
    for judge_name, judge in (evaluate_on or {}).items():
        check_fits(judge, dataset, config.dataset, f"{config.model} judged on {judge_name}")
    out_dir = config.output_path(experiment)
    identity = run_identity(config, experiment, dataset, model, single_run=single_run, defaults=defaults, judges=judges)
    dataset = fit_labels(model, dataset, config.dataset, config.model)  # after the identity: it hashes the files'
    # own labels. The writer lock first (a second process on this folder is refused before it touches
    # anything), then the identity check, and only then the records file is read and repaired.
    lock = writer_lock(config.records_path(out_dir))
    try:
        rid = claim_run(out_dir, identity)
        if config.shard_index == 0:  # where the events go, for the merge of the shards and compare_protocols.py
            from smoothadv_tf.tensorboard_log import record_location

            record_location(out_dir, config.tensorboard_path(out_dir))
    except BaseException:
        lock.close()
        raise
    indices = shard_indices(min(config.num_images, len(dataset)), config.num_shards, config.shard_index)
    # a shard skips what the folder's merged records.jsonl already holds (an earlier run, an earlier merge)
    merged = os.path.join(out_dir, "records.jsonl") if config.num_shards > 1 else None
    with RecordStore(config.records_path(out_dir), lock=lock, done_in=merged) as store:
        logging.info("run %s (protocol %s) in %s", rid, config.protocol, out_dir)  # once its records are readable
        run_experiment(
            model,
            dataset,
            config.attacks,
            config.preset_name,
            store,
            indices,
            batch_size(config, model, dataset),
            single_run=single_run,
            evaluate_on=evaluate_on,
            save_images_dir=f"{out_dir}/images" if save_images else None,
            progress=progress,
            overrides=config.overrides(defaults),
            protocol=config.protocol,
            run_id=rid,
            strategy=placement(config)[1],
            # one shard's first batch, shard 0's, gives the examples and traces (no point written twice)
            tensorboard_dir=config.tensorboard_path(out_dir) if config.shard_index == 0 else None,
            trace_iterations=config.trace_iterations,
        )
        if config.num_shards > 1 and not os.path.exists(store.path):  # a shard given no images (more shards
            open(store.path, "a").close()  # than images) ran all the same: its empty file says so to the merge
    if config.num_shards > 1:
        print(f"shard {config.shard_index}/{config.num_shards} done: {store.path}; merge with scripts/merge_results.py")
        return None, out_dir
    return records_of(store.records, {dataset.ids[i] for i in indices}, store.path, config.num_images), out_dir


def records_of(records: list[dict], image_ids: set, path: str, num_images: int | None = None) -> list[dict]:
    """The records of the images this run was asked for (--num_images): the printed table covers those, and
    says so when the folder holds more (an earlier, larger run)."""
    held = {r["image_id"] for r in records}
    if held <= image_ids:
        return records
    asked = f" (--num_images={num_images})" if num_images is not None else ""
    print(
        f"{path} holds records of {len(held)} images; the tables below cover the {len(image_ids)} asked for{asked} "
        f"and are written under {subset_dir(os.path.dirname(path), len(image_ids))}"
        "; the folder's own tables are left as they were",
        flush=True,
    )
    return [r for r in records if r["image_id"] in image_ids]


def run_experiment(
    model,
    dataset,
    attack_names: Sequence[str],
    preset: str,
    store: RecordStore,
    indices: np.ndarray,
    batch_size: int = 100,
    single_run: bool = False,
    evaluate_on: dict[str, Callable] | None = None,
    save_images_dir: str | None = None,
    progress: bool = True,
    overrides: dict | None = None,
    protocol: str = presets.DEFAULT_PROTOCOL,
    run_id: str | None = None,
    strategy=None,
    tensorboard_dir: str | None = None,
    trace_iterations: bool = False,
) -> None:
    """Attack `model` on dataset[indices] under `protocol` and append per-image records to `store`.

    `evaluate_on` maps names to other models on which the adversarial images are judged instead (transfer,
    §5.4); by default they are judged on `model` itself ("self"). Images with label -1 take the model's
    own prediction as their label. Every record carries the protocol and `run_id` (see
    :func:`smoothadv_tf.records.run_identity`), so records of different runs can always be told apart.
    With a ``tf.distribute`` `strategy` (build the models in its scope), every attack batch is split across
    its replicas; the records are the same as on one device.

    With `tensorboard_dir`, the first batch of `indices`, when this call attacks all of it, also gives each
    attack's example images (of its last run) and, with `trace_iterations`, the per-iteration curves of the
    attacks in :data:`~smoothadv_tf.presets.TRACEABLE_ATTACKS` (:mod:`smoothadv_tf.tensorboard_log`); a
    batch recorded before (a resume) is not attacked again, so it writes nothing twice. They are written
    before the batch's records: a run killed in between rewrites them, whole, when it attacks the batch again.
    """
    with strategy_scope(strategy):  # every attack loop then runs per replica
        from tqdm import tqdm

        from smoothadv_tf.data import DataError

        # records are keyed by image id: a second image of one id would be dropped (and its PNG overwritten)
        if len(set(dataset.ids)) != len(dataset.ids):
            twice = sorted(i for i, n in Counter(dataset.ids).items() if n > 1)
            raise DataError(f"image ids {twice[:5]} name several images each: records need one id per image")

        import tensorflow as tf

        from smoothadv_tf import attacks as attacks_lib  # TensorFlow: imported when attacks run, not to read records
        from smoothadv_tf import perceptibility
        from smoothadv_tf import tensorboard_log as tb
        from smoothadv_tf.smoothing import smoothness

        judges = evaluate_on or {"self": model}
        runs = [(a, p) for a in attack_names for p in attack_runs(a, preset, single_run, overrides, protocol)]
        # Attacks that quantise (the default) round x to 8 bits on entry and judge "originally correct" there
        # (AttackResult.original); the clean records judge the same image, so the two agree.
        rounding = {bool(p.get("quantize", True)) for _, p in runs} or {True}
        if len(rounding) > 1:
            raise ValueError("attack runs with and without quantize: their clean images would differ; run them apart")
        rounds = rounding.pop()
        tags = {"protocol": protocol, "run_id": run_id}
        bar = tqdm(total=len(indices) * len(runs), desc="attack runs x images", unit="img", disable=not progress)
        first_run = {}  # attack -> index of its first run in `runs`
        for n, (attack, _) in enumerate(runs):
            first_run.setdefault(attack, n)
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            ids = [dataset.ids[i] for i in idx]
            x = dataset.images[idx]
            if rounds:  # the clean image the attacks start from (attacks.common._prepare: float32, rounded)
                x = attacks_lib.quantize(tf.constant(np.asarray(x, np.float32))).numpy()
            source_pred = np.argmax(attacks_lib.logits_of(model, x).numpy(), -1)
            y = np.where(dataset.labels[idx] >= 0, dataset.labels[idx], source_pred)
            clean, copied = [], []
            for judge_name, judge in judges.items():
                pred = source_pred if judge is model else np.argmax(attacks_lib.logits_of(judge, x).numpy(), -1)
                for k, image_id in enumerate(ids):
                    if store.has((judge_name, image_id, "clean", None)):
                        # a shard copies the clean records its folder's records.jsonl holds (RecordStore.done_in)
                        copied.append((judge_name, image_id, "clean", None))
                    else:
                        # In transfer, an image counts only if both the source and the judged model get it right.
                        correct = bool(pred[k] == y[k] and source_pred[k] == y[k])
                        clean.append(
                            {
                                "evaluated_on": judge_name,
                                "image_id": image_id,
                                "attack": "clean",
                                "target": None,
                                "label": int(y[k]),
                                "prediction": int(pred[k]),
                                "correct": correct,
                                **tags,
                            }
                        )
            store.copy_done(copied)
            store.append(clean)  # the clean records of a batch first: shard_coverage_problem relies on it
            if save_images_dir:
                save_pngs(save_images_dir, "original", None, ids, x)
            for n, (attack, params) in enumerate(runs):
                target = params.get("epsilon") if attack in DISTORTION_TARGETING else None
                todo = [k for k, i in enumerate(ids) if any(not store.has((j, i, attack, target)) for j in judges)]
                bar.update(len(ids) - len(todo))
                wanted = tensorboard_dir is not None and trace_iterations and attack in presets.TRACEABLE_ATTACKS
                if wanted and start == 0 and len(todo) < len(ids) and n == first_run.get(attack):
                    if not os.path.isdir(os.path.join(tensorboard_dir, "trace", attack)):
                        print(
                            f"--trace_iterations: {attack}'s first batch was recorded by an earlier run without "
                            "it: no trace (trace a run of its own, in another --output_dir)",
                            flush=True,
                        )
                if not todo:
                    continue
                # TensorBoard's images and traces come from the whole first batch, attacked here and now
                logged = tensorboard_dir is not None and start == 0 and len(todo) == len(ids)
                tracing = logged and trace_iterations and attack in presets.TRACEABLE_ATTACKS
                started = time.perf_counter()
                with attacks_lib.record_iterations() if tracing else contextlib.nullcontext() as traces:
                    result = attacks_lib.run_attack(attack, model, x[todo], y[todo], **params)  # numpy: finished
                seconds = (time.perf_counter() - started) / len(todo)
                if logged and all(a != attack for a, _ in runs[n + 1 :]):  # the attack's last run (largest ε)
                    tb.write_examples(tensorboard_dir, attack, result)
                if tracing:
                    tb.write_trace(tensorboard_dir, traces[0])
                # perceptibility of the judged (quantised) image against the image the attack started from and
                # measured D from (x rounded to 8 bits when quantising), as D
                original = result.original
                smooth = smoothness(result.adversarial - original, original).numpy()
                ssim = perceptibility.ssim(original, result.adversarial)
                psnr = perceptibility.psnr(original, result.adversarial)
                new = []
                for judge_name, judge in judges.items():
                    if judge is model:
                        success, pred = result.success, result.prediction
                    else:
                        pred = np.argmax(attacks_lib.logits_of(judge, result.adversarial).numpy(), -1)
                        success = pred != y[todo]
                    for j, k in enumerate(todo):
                        new.append(
                            {
                                "evaluated_on": judge_name,
                                "image_id": ids[k],
                                "attack": attack,
                                "target": target,
                                "success": bool(success[j]),
                                "distortion": float(result.distortion[j]),
                                "label": int(y[k]),
                                "prediction": int(pred[j]),
                                "smoothness": float(smooth[j]),
                                "ssim": float(ssim[j]),
                                "psnr": perceptibility.psnr_for_json(psnr[j]),
                                "iterations": int(result.iterations[j]),
                                "seconds": seconds,
                                **tags,
                            }
                        )
                if save_images_dir:
                    save_pngs(save_images_dir, attack, target, [ids[k] for k in todo], result.adversarial)
                store.append(new)
                bar.update(len(todo))
        bar.close()
