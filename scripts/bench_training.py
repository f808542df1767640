"""Benchmark adversarial training: seconds per epoch of C4 on Fashion-MNIST, clean and against each training
attack (smoothadv_tf.training.AdversarialTraining through keras fit), as ratios to clean.

Each training runs one fit of 1 + --rounds rounds (Keras epochs) of --batches batches: the first round traces
the step and is dropped (Keras traces again at every fit call, so the rounds share one call); the median
timed round gives ms per batch, and seconds per epoch = that x the epoch's whole batches (60,000 // batch
size). Run it on an otherwise idle machine: the trainings run one after the other.
Target (issue #23): sPGD₂-k within 1.3x of PGD₂-k per epoch at 28x28.

    python scripts/bench_training.py                                    # clean, step_ll, pgd2, smooth_pgd2
    python scripts/bench_training.py --train_attacks=pgd2,smooth_pgd2,smooth_pgd2_latent --batches=50
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from smoothadv_tf import data, presets
from smoothadv_tf.cli import check_writable, run_script

FLAGS = flags.FLAGS
CHOICES = ("clean", *presets.TRAIN_ATTACKS)
flags.DEFINE_enum("dataset", "fashion_mnist", ["mnist", "fashion_mnist"], "training data")
flags.DEFINE_string("data_dir", None, "directory of IDX files (default: the dataset's standard place)")
flags.DEFINE_list("train_attacks", ["clean", "step_ll", "pgd2", "smooth_pgd2"], f"trainings to time, of {CHOICES}")
flags.DEFINE_integer("batch_size", 128, "batch size", lower_bound=1)
flags.DEFINE_integer("batches", 100, "batches per timed round", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "timed rounds (median reported)", lower_bound=1)
flags.DEFINE_string("output", "results/bench_training.json", "JSON output path")
TARGET = ("smooth_pgd2", "pgd2", 1.3)  # sPGD₂-k / PGD₂-k per epoch


def RoundTimes():
    import keras

    class _RoundTimes(keras.callbacks.Callback):
        """Seconds of each epoch (= round) of a fit."""

        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    return _RoundTimes()


def check_flags() -> list[str]:
    unknown = [a for a in FLAGS.train_attacks if a not in CHOICES]
    if unknown or not FLAGS.train_attacks:
        raise app.UsageError(f"--train_attacks={','.join(FLAGS.train_attacks)}: expected some of {list(CHOICES)}")
    check_writable("--output", os.path.dirname(os.path.abspath(FLAGS.output)))  # a file there is replaced
    return list(dict.fromkeys(FLAGS.train_attacks))


def main(_):
    names = check_flags()
    train = data.load_dataset(FLAGS.dataset, FLAGS.data_dir, "train")
    needed = FLAGS.batch_size * FLAGS.batches
    if needed > len(train):
        raise app.UsageError(
            f"--batches={FLAGS.batches} x --batch_size={FLAGS.batch_size}: more than {len(train)} images"
        )
    import keras
    import tensorflow as tf

    from smoothadv_tf.models import c4
    from smoothadv_tf.training import AdversarialTraining

    batches = (
        tf.data.Dataset.from_tensor_slices((train.images[:needed], train.labels[:needed]))
        .batch(FLAGS.batch_size, drop_remainder=True)
        .cache()
        .repeat()
    )
    times = {}
    for name in names:
        keras.utils.set_random_seed(0)
        model = c4(10, train.images.shape[1:])
        trainer = model if name == "clean" else AdversarialTraining(model, name, dataset=FLAGS.dataset)
        trainer.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )
        # One fit call (Keras traces the step again at every call): its first round traces, the others are timed.
        rounds = RoundTimes()
        trainer.fit(batches, steps_per_epoch=FLAGS.batches, epochs=1 + FLAGS.rounds, verbose=0, callbacks=[rounds])
        times[name] = [t / FLAGS.batches for t in rounds.seconds[1:]]
    per_epoch = len(train) // FLAGS.batch_size
    per_epoch = len(train) // FLAGS.batch_size
    ms = {name: 1000 * float(np.median(t)) for name, t in times.items()}
    clean = ms.get("clean")
    budgets = {n: presets.training_params(n, FLAGS.dataset) for n in names if n != "clean"}
    rows = [
        "| training | budget | ms / batch | s / epoch | × clean |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        budget = ", ".join(
            f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in budgets.get(name, {}).items()
        )
        ratio = f"{ms[name] / clean:.2f}" if clean else "n/a"
        rows.append(f"| {name} | {budget} | {ms[name]:.1f} | {ms[name] * per_epoch / 1000:.1f} | {ratio} |")
    print(f"C4 on {FLAGS.dataset}, batches of {FLAGS.batch_size} ({per_epoch} per epoch), median of {FLAGS.rounds} "
          f"rounds of {FLAGS.batches} batches:\n")  # fmt: skip
    print("\n".join(rows))
    result = {"ms_per_batch": ms, "seconds_per_epoch": {n: v * per_epoch / 1000 for n, v in ms.items()}}
    smooth, plain, target = TARGET
    if smooth in ms and plain in ms:
        ratio = ms[smooth] / ms[plain]
        verdict = "met" if ratio <= target else "missed"
        print(f"\n{smooth} / {plain} per epoch: {ratio:.2f}x (target <= {target}x: {verdict})")
        result["target"] = {"pair": f"{smooth} / {plain}", "ratio": ratio, "target": target, "met": ratio <= target}
    result.update(batch_size=FLAGS.batch_size, batches=FLAGS.batches, rounds=FLAGS.rounds, times=times, budgets=budgets)
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(FLAGS.output + ".tmp", FLAGS.output)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    run_script(main)
