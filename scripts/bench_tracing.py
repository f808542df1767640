"""What --trace_iterations costs: the minimisation attacks on C4 with and without their per-iteration trace
(attacks.record_iterations), on the same images, interleaved rounds, after a warm-up call of each (tracing and
compiling apart).

    python scripts/bench_tracing.py --num_images=100

Prints a table (ms per image without / with the trace, the ratio: median over rounds) and writes JSON. The
default path is the loop without the trace, untouched: the trace is a separately traced variant, so only the
runs that ask for it pay.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from smoothadv_tf.cli import (
    check_writable,
    run_script,
)  # TensorFlow-free: flags are checked before TensorFlow is imported
from smoothadv_tf.presets import TRACEABLE_ATTACKS
from smoothadv_tf.records import atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 100, "Fashion-MNIST test images", lower_bound=1)
flags.DEFINE_string("checkpoint", None, "C4 .keras file (default: the cached models/c4_fashion_mnist_seed0.keras)")
flags.DEFINE_integer("rounds", 3, "interleaved timing rounds", lower_bound=1)
flags.DEFINE_list("attacks", list(TRACEABLE_ATTACKS), f"attacks to time, from {list(TRACEABLE_ATTACKS)}")
flags.DEFINE_enum("protocol", "paper", ["paper", "strong"], "C&W / sC&W protocol")
flags.DEFINE_string("output", "results/bench_tracing.json", "JSON output path")


def main(_):
    unknown = sorted(set(FLAGS.attacks) - set(TRACEABLE_ATTACKS))
    if unknown:
        raise app.UsageError(f"--attacks={','.join(FLAGS.attacks)}: {unknown} are not traced; expected some of "
                             f"{list(TRACEABLE_ATTACKS)}")  # fmt: skip
    if FLAGS.checkpoint and not os.path.isfile(FLAGS.checkpoint):
        raise app.UsageError(f"--checkpoint={FLAGS.checkpoint}: no such file")
    check_writable("--output", os.path.dirname(os.path.abspath(FLAGS.output)))  # a file there is replaced
    import keras

    from smoothadv_tf import attacks
    from smoothadv_tf.data import load_fashion_mnist
    from smoothadv_tf.models import load_or_train_c4

    test = load_fashion_mnist("test")
    x, y = test.images[: FLAGS.num_images], test.labels[: FLAGS.num_images]
    path = FLAGS.checkpoint or "models/c4_fashion_mnist_seed0.keras"
    model = keras.models.load_model(path) if FLAGS.checkpoint else load_or_train_c4(path)

    def call(name, traced):
        params = attacks.preset("mnist", name, protocol=FLAGS.protocol)
        if traced:
            with attacks.record_iterations():
                return attacks.run_attack(name, model, x, y, **params)
        return attacks.run_attack(name, model, x, y, **params)

    rows = []
    for name in FLAGS.attacks:
        plain, traced = call(name, False), call(name, True)  # warm-up: trace and compile both loops
        assert np.array_equal(plain.adversarial, traced.adversarial), f"{name}: the trace changed the result"
        times = {False: [], True: []}
        for _ in range(FLAGS.rounds):
            for flag in (False, True):
                start = time.perf_counter()
                call(name, flag)
                times[flag].append(time.perf_counter() - start)
        without, with_trace = (1000 * float(np.median(times[f])) / len(x) for f in (False, True))
        rows.append({"attack": name, "ms_per_image": without, "ms_per_image_traced": with_trace,
                     "ratio": with_trace / without})  # fmt: skip
        print(
            f"{name:26s} {without:8.2f} ms/image  traced {with_trace:8.2f}  ratio {with_trace / without:.3f}",
            flush=True,
        )
    print("\n| attack | ms/image | with --trace_iterations | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['attack']} | {r['ms_per_image']:.2f} | {r['ms_per_image_traced']:.2f} | {r['ratio']:.3f} |")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    summary = {"images": len(x), "protocol": FLAGS.protocol, "rounds": FLAGS.rounds, "rows": rows}
    atomic_write(FLAGS.output, json.dumps(summary, indent=2))
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    run_script(main)
