"""Images per second of each attack on one device and on several (tf.distribute.MirroredStrategy).

    python scripts/bench_devices.py                          # all GPUs, or the CPU split in two
    python scripts/bench_devices.py --devices=GPU:0,GPU:1,GPU:2,GPU:3 --model=inception_v3

The one-device run is the default placement (what a script does without --devices); the multi-device run
splits each batch across --devices. Each configuration is traced once, then timed over --rounds
interleaved rounds (median). It also checks that both give the same adversarial images. C4 uses the cached
models/c4_fashion_mnist_seed0.keras (or --checkpoint) on Fashion-MNIST; inception_v3 runs random weights on
random 299x299 images (only timing matters).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from smoothadv_tf import devices, presets
from smoothadv_tf.cli import run_script
from smoothadv_tf.config import c4_cache_path, check_attack_params, check_attacks, parse_attack_params

FLAGS = flags.FLAGS
flags.DEFINE_list("devices", [], "the devices of the multi-device run (default: all GPUs, else CPU:0,CPU:1)")
flags.DEFINE_enum("model", "c4", ["c4", "inception_v3"], "C4 on Fashion-MNIST, or InceptionV3 (random weights)")
flags.DEFINE_string("checkpoint", None, "C4 .keras file (default: models/c4_fashion_mnist_seed0.keras)")
flags.DEFINE_list("attacks", list(presets.PAPER_ATTACKS), "attacks to time")
flags.DEFINE_integer("num_images", 100, "images per batch (split across the devices)", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "interleaved timing rounds", lower_bound=1)
flags.DEFINE_list("attack_params", ["iterations=20"], "preset overrides (key=value) for every attack taking them")
flags.DEFINE_string("output", "results/bench_devices.json", "JSON output path")


def main(_):
    try:
        names = devices.parse_devices(FLAGS.devices)
    except ValueError as e:
        raise app.UsageError(f"--devices: {e}") from None
    attack_names = check_attacks(FLAGS.attacks)
    overrides = parse_attack_params(FLAGS.attack_params, attack_names)
    preset = "mnist" if FLAGS.model == "c4" else "imagenet"
    check_attack_params(attack_names, overrides, preset, presets.DEFAULT_PROTOCOL)
    import tensorflow as tf

    from smoothadv_tf import attacks
    from smoothadv_tf.data import load_fashion_mnist

    if not names:
        gpus = tf.config.list_physical_devices("GPU")
        names = [f"GPU:{i}" for i in range(len(gpus))] if len(gpus) > 1 else ["CPU:0", "CPU:1"]
    try:
        names = devices.configure(names)
    except ValueError as e:
        raise app.UsageError(f"--devices: {e}") from None
    strategy = devices.strategy_for(names)

    def load():
        if FLAGS.model == "c4":
            from smoothadv_tf.models.loading import load_c4

            return load_c4(FLAGS.checkpoint or c4_cache_path("c4", "fashion_mnist", 0))
        from smoothadv_tf.models import slim

        tf.keras.utils.set_random_seed(0)
        return slim.inception_v3()

    single = load()
    with strategy.scope():
        mirrored = load()
        mirrored.set_weights(single.get_weights())
    if FLAGS.model == "c4":
        test = load_fashion_mnist("test")
        x, y = test.images[: FLAGS.num_images], test.labels[: FLAGS.num_images]
        preset = "mnist"
    else:
        x = np.random.default_rng(0).uniform(0, 1, (FLAGS.num_images, 299, 299, 3)).astype(np.float32)
        y = np.argmax(single(x).numpy(), -1)
        preset = "imagenet"
    rows = []
    print(f"{FLAGS.model}, {len(x)} images per batch; 1 device (default placement) vs {', '.join(names)}")
    print(f"| attack | 1 device img/s | {len(names)} devices img/s | speed-up | same images |")
    print("|---|---|---|---|---|")
    for attack in FLAGS.attacks:
        params = attacks.preset(preset, attack)
        params.update(presets.overrides_for(attack, overrides))

        def one(attack=attack, params=params):
            return attacks.run_attack(attack, single, x, y, **params)

        def several(attack=attack, params=params):
            with strategy.scope():
                return attacks.run_attack(attack, mirrored, x, y, **params)

        same = np.array_equal(one().adversarial, several().adversarial)  # also traces both
        seconds = {"one": [], "several": []}
        for _ in range(FLAGS.rounds):
            for label, fn in (("one", one), ("several", several)):
                start = time.perf_counter()
                fn()
                seconds[label].append(time.perf_counter() - start)
        rate = {label: len(x) / float(np.median(s)) for label, s in seconds.items()}
        rows.append({"attack": attack, "images_per_s": rate, "same_images": bool(same), "params": params})
        print(
            f"| {presets.DISPLAY_NAMES[attack]} | {rate['one']:.1f} | {rate['several']:.1f} | "
            f"{rate['several'] / rate['one']:.2f}x | {'yes' if same else 'NO'} |",
            flush=True,
        )
    out = {"model": FLAGS.model, "devices": names, "cpu_count": os.cpu_count(), "rows": rows}
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(out, f, indent=2, default=str)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    run_script(main)
