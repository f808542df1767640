"""A run in TensorBoard: the event files the experiment scripts write under ``<run folder>/tb/`` (or
``--tensorboard_dir``). ``tensorboard --logdir results/`` then shows every run; each folder below is one of
TensorBoard's runs:

- ``summary/`` (:func:`write_summary`, when the tables are written): the scalars of ``summary.json`` — tags
  ``p_suc/<attack>``, ``mean_distortion/<attack>``, ``mean_ssim/<attack>``, ``mean_psnr/<attack>``,
  ``mean_smoothness/<attack>`` and ``accuracy`` at step 0 — and, for the attacks swept over a target ε (§5.1),
  the same statistics of each ε run alone under ``<stat>_by_epsilon/<attack>`` at step round(1000 ε), so that
  TensorBoard draws P_suc and D̄ against ε; the operating characteristic (Fig. 2/3) as the image
  ``operating_characteristic``. Transfer's judged models and a smaller rerun's subset get their own folder
  (``summary_<judge>``, ``first<N>/summary``), as their tables do.
- ``images/<attack>/`` (:func:`write_examples`, after the attack's first batch): a few attacked images of
  that batch — ``original``, ``adversarial``, ``perturbation`` (r scaled per image to [0, 1], 0.5 = none) and
  ``magnified`` (eq. 22's adversarial magnification of the adversarial image, one common scale: Fig. 1) — of
  the attack's last run (its largest ε).
- ``trace/<attack>/`` (:func:`write_trace`, with ``--trace_iterations``, C&W, sC&W, DDN, sDDN, FMN, sFMN):
  ``trace/loss``, ``trace/distortion`` and ``trace/adversarial`` at every iteration of the first batch
  (:class:`smoothadv_tf.attacks.IterationTrace`; the step is the iteration, binary-search steps one after
  another), so the C&W and sC&W curves of the paper and the strong protocol overlay in one chart.
- ``examples/`` (scripts/examples.py: its figure, Fig. 4/5) and ``protocol_sweep/`` (scripts/protocol_sweep.py:
  ``mean_distortion_by_<sweep>/<attack>_<rule>`` and ``p_suc_by_<sweep>/...`` at step = the swept value, and its
  figure), through :func:`write_points`.

No point is ever written twice: each folder is written whole, in a staging folder beside it, and replaces the
old one (:func:`_replacing`; a writer killed half-way leaves the old folder, restored by the next). A resumed run rewrites ``summary/`` from all the records (the new point replaces the old); its
``images/`` and ``trace/`` come from the first batch, which only the run that attacked it writes (a resume
that finds it recorded writes none). Of a sharded run only shard 0 writes them, from its own first batch
(images 0, N, 2N, ... of N shards); its ``summary/`` is written by ``scripts/merge_results.py``. TensorFlow writes the files
(``tf.summary.write`` with the plugin metadata TensorBoard reads, :func:`plugin_metadata`); the
``tensorboard`` package is needed only to view them (``pip install 'smoothadv_tf[tensorboard]'``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Sequence

import numpy as np

from smoothadv_tf import config as config_lib
from smoothadv_tf import statistics
from smoothadv_tf.records import atomic_write

SUMMARY_STATISTICS = ("p_suc", "mean_distortion", "mean_ssim", "mean_psnr", "mean_smoothness")
EPSILON_STEP = 1000  # the step of a per-ε point: round(1000 ε)
EXAMPLES = 3  # attacked images per attack in images/
TRACE_TAGS = {"loss": "trace/loss", "distortion": "trace/distortion", "adversarial": "trace/adversarial"}


LOCATION_FILE = "tensorboard.json"  # in a run folder: where its events go (scripts/merge_results.py reads it)


def record_location(out_dir: str, events_dir: str | None) -> None:
    """Note in the run folder where its TensorBoard events go (None: --notensorboard), so that the scripts that
    read the run later (the merge of its shards, compare_protocols.py) write and read them there too."""
    path = None if events_dir is None else os.path.abspath(events_dir)
    atomic_write(os.path.join(out_dir, LOCATION_FILE), json.dumps({"events": path}) + "\n")


def recorded_location(out_dir: str) -> str | None:
    """Where the run in `out_dir` writes its TensorBoard events: as it noted (:func:`record_location`; None
    with --notensorboard), or ``<out_dir>/tb`` for a run that noted nothing (made before the note existed)."""
    path = os.path.join(out_dir, LOCATION_FILE)
    if not os.path.exists(path):
        return os.path.join(out_dir, "tb")
    try:
        return json.load(open(path))["events"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a TensorBoard location note ({e}); delete it to use {out_dir}/tb") from None


@contextlib.contextmanager
def _replacing(folder: str):
    """Yield a tf.summary writer on a staging folder that replaces `folder` once the writer is closed. One
    writer per folder at a time (a lock file beside it); a writer that fails removes its staging folder, and
    one killed half-way is recovered by the next (:func:`_recover`), so TensorBoard never reads a half-written
    or a second copy of a folder from disk. (A TensorBoard already showing the folder sees the new points at
    the same steps and drops the old ones: its handling of a restarted run.)"""
    import fcntl

    import tensorflow as tf

    parent, name = os.path.split(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging, old = os.path.join(parent, f".{name}.staging"), os.path.join(parent, f".{name}.old")
    with open(os.path.join(parent, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _recover(folder, staging, old)
        writer = tf.summary.create_file_writer(staging)
        try:
            with writer.as_default():
                yield
        except BaseException:
            writer.close()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        writer.close()
        replaced = os.path.exists(folder)
        if replaced:
            os.replace(folder, old)
        os.replace(staging, folder)
        if replaced:
            shutil.rmtree(old)


def _recover(folder: str, staging: str, old: str) -> None:
    """What a writer killed inside :func:`_replacing` left: a staging folder (half-written: removed) and,
    killed between its two renames, the old folder set aside (put back if the new one is not in place)."""
    shutil.rmtree(staging, ignore_errors=True)
    if os.path.exists(old):
        if os.path.exists(folder):
            shutil.rmtree(old)
        else:
            os.replace(old, folder)


def plugin_metadata(plugin: str):
    """The SummaryMetadata that tells TensorBoard which of its plugins shows a tensor ("scalars", "images"):
    what ``tf.summary.scalar`` / ``tf.summary.image`` attach. Those two live in the ``tensorboard`` package
    (without it TensorFlow 2.21 raises TBNotInstalledError); ``tf.summary.write`` with this metadata writes the
    same events with TensorFlow alone (tested against TensorBoard's own metadata and reader)."""
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))


def _scalar(tag: str, value, step: int) -> None:
    import tensorflow as tf

    value = float(value) if value is not None else float("nan")
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=plugin_metadata("scalars"))


def _images(tag: str, images, step: int = 0) -> None:
    """A batch of (k, H, W, C) images (floats in [0, 1], or uint8) as TensorBoard's image summary stores
    them: width, height, then one PNG per image."""
    import tensorflow as tf

    images = tf.image.convert_image_dtype(tf.convert_to_tensor(images), tf.uint8, saturate=True)
    shape = tf.shape(images)
    encoded = tf.stack([tf.image.encode_png(image) for image in images])
    data = tf.concat([tf.stack([tf.as_string(shape[2]), tf.as_string(shape[1])]), encoded], 0)
    tf.summary.write(tag, data, step=step, metadata=plugin_metadata("images"))


def epsilon_step(epsilon: float) -> int:
    """The TensorBoard step of an ε run's point: round(1000 ε)."""
    return int(round(EPSILON_STEP * float(epsilon)))


def write_summary(
    logdir: str, records: Sequence[dict], summary: dict, plot_path: str | None, name: str = "summary"
) -> str:
    """Replace ``<logdir>/<name>`` with `summary`'s scalars (:func:`smoothadv_tf.statistics.summarize` of
    `records`), the per-ε ones and the operating characteristic PNG at `plot_path`; return the folder."""
    import tensorflow as tf

    folder = os.path.join(logdir, name)
    evaluated_on = summary.get("evaluated_on", "self")
    clean = [r for r in records if r["attack"] == "clean"]
    with _replacing(folder):
        _scalar("accuracy", summary["accuracy"], 0)
        for attack, row in summary["attacks"].items():
            for stat in SUMMARY_STATISTICS:
                _scalar(f"{stat}/{attack}", row.get(stat), 0)
        for attack in summary["attacks"]:
            if attack not in config_lib.DISTORTION_TARGETING:
                continue
            targets = sorted({r["target"] for r in records if r["attack"] == attack and r.get("target") is not None})
            for target in targets:
                runs = [r for r in records if r["attack"] == attack and r.get("target") == target]
                row = statistics.summarize(clean + runs, evaluated_on)["attacks"][attack]
                for stat in SUMMARY_STATISTICS:
                    _scalar(f"{stat}_by_epsilon/{attack}", row.get(stat), epsilon_step(target))
        if plot_path is not None:
            png = tf.io.decode_png(tf.io.read_file(plot_path), channels=3)
            _images("operating_characteristic", png[None])
    return folder


def example_panels(original: np.ndarray, adversarial: np.ndarray) -> dict[str, np.ndarray]:
    """{name: (k, H, W, C) images in [0, 1]} for TensorBoard: the originals, the adversarial images, their
    perturbations scaled per image so that 0 is mid-grey and the largest |r| is 0 or 1, and the adversarial
    images magnified (eq. 22) on one common scale."""
    from smoothadv_tf.magnify import magnify, to_display

    r = adversarial - original
    peak = np.abs(r).max(axis=(1, 2, 3), keepdims=True)
    return {
        "original": original,
        "adversarial": adversarial,
        "perturbation": 0.5 + 0.5 * r / np.where(peak > 0, peak, 1.0),
        "magnified": to_display(magnify(adversarial).numpy()),
    }


def write_examples(logdir: str, attack: str, result, count: int = EXAMPLES) -> str | None:
    """Replace ``<logdir>/images/<attack>`` with `count` images of `result` (an AttackResult): its successes
    first, then its other attacked images, in batch order. None (nothing written) if it attacked none."""

    attacked = np.flatnonzero(result.attacked)
    chosen = np.concatenate([attacked[result.success[attacked]], attacked[~result.success[attacked]]])[:count]
    if not len(chosen):
        return None
    folder = os.path.join(logdir, "images", attack)
    panels = example_panels(result.original[chosen], result.adversarial[chosen])
    with _replacing(folder):
        for name, images in panels.items():
            _images(name, np.clip(images, 0.0, 1.0).astype(np.float32))
    return folder


def write_trace(logdir: str, trace) -> str:
    """Replace ``<logdir>/trace/<attack>`` with an :class:`~smoothadv_tf.attacks.IterationTrace`'s curves."""
    folder = os.path.join(logdir, "trace", trace.attack)
    with _replacing(folder):
        for field, tag in TRACE_TAGS.items():
            for step, value in zip(trace.steps, getattr(trace, field)):
                _scalar(tag, value, int(step))
    return folder


def write_points(
    logdir: str, name: str, points: Sequence[tuple[str, int, float]] = (), figures: dict | None = None
) -> str:
    """Replace ``<logdir>/<name>`` with scalar `points` (tag, step, value) and `figures` ({tag: PNG path}):
    what scripts/protocol_sweep.py (D̄ and P_suc against its sweeps) and scripts/examples.py (its figure)
    write."""
    import tensorflow as tf

    folder = os.path.join(logdir, name)
    with _replacing(folder):
        for tag, step, value in points:
            _scalar(tag, value, int(step))
        for tag, path in (figures or {}).items():
            _images(tag, tf.io.decode_png(tf.io.read_file(path), channels=3)[None])
    return folder


def read_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the scalars in one TensorBoard run folder (its event files in name
    order, i.e. as written), read with TensorFlow alone (the tests read them with TensorBoard's own reader)."""
    import tensorflow as tf

    out: dict[str, list[tuple[int, float]]] = {}
    for name in sorted(os.listdir(folder)):
        if not name.startswith("events.out.tfevents"):
            continue
        for raw in tf.data.TFRecordDataset(os.path.join(folder, name)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor) if value.HasField("tensor") else None
                if array is not None and array.ndim == 0 and array.dtype.kind == "f":
                    out.setdefault(value.tag, []).append((int(event.step), float(array)))
    return out
