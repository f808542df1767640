"""Peak memory of one attack batch on ImageNet-size images, per attack and gradient mode of the smoothing.

    python scripts/bench_memory.py                       # InceptionV3 299x299, batches of 2, 4 and 8
    python scripts/bench_memory.py --batch_sizes=1,2,4,8,16 --model=resnet_v2_50

Each (attack, batch size) runs in its own process (so peaks do not mix) on the model with random weights and
random images: one binary-search step of --iterations Adam steps (memory does not grow with the iteration
count; it is set by one step's forward + backward). On a GPU the peak is TensorFlow's allocator peak
(``tf.config.experimental.get_memory_info``); on the CPU it is the process's peak resident memory minus the
peak after building the model and classifying one image. The per-image cost is the least-squares slope over
the batch sizes; ``devices.estimate_bytes_per_image`` is the estimate the scripts use, printed beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

from smoothadv_tf.cli import run_script

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "inception_v3", ["inception_v3", "resnet_v2_50"], "slim model (random weights)")
flags.DEFINE_list("batch_sizes", ["2", "4", "8"], "batch sizes to measure")
flags.DEFINE_integer("iterations", 2, "Adam iterations of the measured step", lower_bound=1)
flags.DEFINE_list(
    "variants",
    ["carlini_wagner_l2", "smooth_carlini_wagner_l2/autodiff", "smooth_carlini_wagner_l2/implicit"],
    "attack[/cg_gradient] to measure",
)
flags.DEFINE_string("output", "results/bench_memory.json", "JSON output path")
flags.DEFINE_string("_child", None, "internal: measure one variant,batch in this process")

GIB = 2**30


def child(spec: str) -> None:
    """Measure one (variant, batch size) here; print one JSON line."""
    import resource

    import tensorflow as tf

    from smoothadv_tf import attacks, devices
    from smoothadv_tf.models import slim

    variant, batch = spec.rsplit(",", 1)
    attack, _, gradient = variant.partition("/")
    batch = int(batch)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    model = slim.build(FLAGS.model)
    side = 299
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, side, side, 3)).astype(np.float32)
    y = np.argmax(model(x[:1]).numpy(), -1).repeat(batch)
    params = attacks.preset("imagenet", attack, binary_search_steps=1, iterations=FLAGS.iterations)
    if gradient:
        params["cg_gradient"] = gradient
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
        base = tf.config.experimental.get_memory_info("GPU:0")["current"]
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    attacks.run_attack(attack, model, x, y, **params)
    if gpu:
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = devices.estimate_bytes_per_image(model, x.shape[1:], {attack: params})
    print(json.dumps({"variant": variant, "batch": batch, "bytes": peak - base, "estimate": estimate["total"]}))


def main(_):
    if FLAGS._child:
        return child(FLAGS._child)
    sizes = sorted({int(b) for b in FLAGS.batch_sizes})
    if not sizes or min(sizes) < 1:
        raise app.UsageError("--batch_sizes: positive integers")
    rows = []
    for variant in FLAGS.variants:
        for batch in sizes:
            done = subprocess.run(
                [sys.executable, __file__, f"--_child={variant},{batch}", f"--model={FLAGS.model}",
                 f"--iterations={FLAGS.iterations}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if done.returncode or not lines:
                raise RuntimeError(f"{variant} batch {batch} failed:\n{done.stderr[-3000:]}")
            row = json.loads(lines[-1])
            rows.append(row)
            print(f"{variant:36s} batch {batch:3d}: peak +{row['bytes'] / GIB:.2f} GiB", flush=True)
    print(f"\n{FLAGS.model}, 299x299; per image = slope over batches {sizes}")
    print("| attack | measured GiB / image | fixed GiB | estimate GiB / image |")
    print("|---|---|---|---|")
    summary = {}
    for variant in FLAGS.variants:
        pts = [(r["batch"], r["bytes"]) for r in rows if r["variant"] == variant]
        b, m = np.array(pts, np.float64).T
        slope, intercept = np.polyfit(b, m, 1) if len(b) > 1 else (m[0] / b[0], 0.0)
        estimate = next(r["estimate"] for r in rows if r["variant"] == variant)
        summary[variant] = {"bytes_per_image": slope, "fixed_bytes": intercept, "estimate_per_image": estimate}
        print(f"| {variant} | {slope / GIB:.3f} | {intercept / GIB:.2f} | {estimate / GIB:.3f} |")
    out = {"model": FLAGS.model, "cpu_count": os.cpu_count(), "rows": rows, "summary": summary}
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    run_script(main)
