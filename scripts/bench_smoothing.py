"""Benchmark the batched CG smoothing (s_α, eq. 8) against scipy.sparse.linalg.cg on the identical graph.

Prints a table and writes JSON: ms per image for the forward solve and for forward+backward (autodiff and
implicit gradients), per batch size, next to scipy's CG (same W, same iteration count, one channel at a time),
plus peak process memory and the fraction of a measured memory-copy bandwidth the forward pass reaches.

    python scripts/bench_smoothing.py --size=299 --batch_sizes=1,16 --iterations=50
"""

from __future__ import annotations

import json
import os
import resource
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import tensorflow as tf
from absl import app, flags, logging

from smoothadv_tf.smoothing import Smoother

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 299, "image side (pixels)")
flags.DEFINE_list("batch_sizes", ["1", "16"], "batch sizes to time")
flags.DEFINE_integer("iterations", 50, "CG iterations")
flags.DEFINE_float("alpha", 0.997, "smoothing α (ImageNet preset)")
flags.DEFINE_integer("repeats", 5, "timed repeats (median reported)")
flags.DEFINE_boolean("jit", True, "compile with XLA")
flags.DEFINE_string("output", "results/bench_smoothing.json", "JSON output path")


def real_photos(size: int, count: int) -> np.ndarray:
    """scikit-image's bundled photos, resized to size x size (real images, as the paper's guide x_o)."""
    from skimage import data as skdata
    from skimage.transform import resize

    names = ["astronaut", "chelsea", "coffee", "rocket"]
    photos = [resize(getattr(skdata, n)(), (size, size), anti_aliasing=True) for n in names]
    return np.stack([photos[i % len(photos)] for i in range(count)]).astype(np.float32)


def median_ms(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


def copy_bandwidth_gbs() -> float:
    """Measured memory-copy bandwidth (read + write bytes per second) with a 256 MiB numpy copy."""
    a = np.ones(64 * 2**20, np.float32)
    b = np.empty_like(a)
    t = min(_timed(lambda: np.copyto(b, a)) for _ in range(5))
    return 2 * a.nbytes / t / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def scipy_ms_per_image(x: np.ndarray, z: np.ndarray, alpha: float, iterations: int) -> float:
    smoother = Smoother(x[:1], alpha=alpha, iterations=1)
    w = smoother.graph.to_scipy(0)
    deg = np.maximum(np.asarray(w.sum(axis=1)).ravel(), 1e-20)
    d = sp.diags(1.0 / np.sqrt(deg))
    lap = ((sp.eye(w.shape[0]) - alpha * (d @ w @ d)) / (1 - alpha)).tocsr()
    rhs = [z[0, ..., c].ravel().astype(np.float64) for c in range(z.shape[-1])]

    def run():
        for b in rhs:
            sla.cg(lap, b, rtol=0.0, atol=0.0, maxiter=iterations)

    return median_ms(run, FLAGS.repeats)


def main(_):
    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU ({gpus[0].name})" if gpus else f"CPU ({os.cpu_count()} cores)"
    results = {
        "device": device,
        "size": FLAGS.size,
        "iterations": FLAGS.iterations,
        "alpha": FLAGS.alpha,
        "jit": FLAGS.jit,
        "rows": [],
    }
    bandwidth = copy_bandwidth_gbs()
    results["copy_bandwidth_gbs"] = bandwidth
    x_all = real_photos(FLAGS.size, max(int(b) for b in FLAGS.batch_sizes))
    z_all = np.random.default_rng(0).standard_normal(x_all.shape).astype(np.float32)
    scipy_ms = scipy_ms_per_image(x_all, z_all, FLAGS.alpha, FLAGS.iterations)
    results["scipy_cg_ms_per_image"] = scipy_ms

    for batch in (int(b) for b in FLAGS.batch_sizes):
        x, z = tf.constant(x_all[:batch]), tf.constant(z_all[:batch])
        row = {"batch": batch}
        for gradient in ("autodiff", "implicit"):

            @tf.function(jit_compile=FLAGS.jit)
            def forward(x, z, gradient=gradient):
                return Smoother(x, alpha=FLAGS.alpha, iterations=FLAGS.iterations, gradient=gradient).solve(z)

            @tf.function(jit_compile=FLAGS.jit)
            def forward_backward(x, z, gradient=gradient):
                with tf.GradientTape() as tape:
                    tape.watch(z)
                    s = Smoother(x, alpha=FLAGS.alpha, iterations=FLAGS.iterations, gradient=gradient).solve(z)
                    loss = tf.reduce_sum(s * s)
                return tape.gradient(loss, z)

            if gradient == "autodiff":  # the forward pass is the same solve for both modes
                row["forward_ms_per_image"] = (
                    median_ms(lambda x=x, z=z, f=forward: f(x, z).numpy(), FLAGS.repeats) / batch
                )
            row[f"fwd_bwd_{gradient}_ms_per_image"] = (
                median_ms(lambda x=x, z=z, f=forward_backward: f(x, z).numpy(), FLAGS.repeats) / batch
            )
        # Bytes a bandwidth-bound CG must touch per iteration: ~10 image-sized float32 arrays read or written.
        bytes_per_image = FLAGS.iterations * 10 * 4 * x_all[0].size
        row["bandwidth_fraction"] = bytes_per_image / (row["forward_ms_per_image"] / 1000) / 1e9 / bandwidth
        row["speedup_vs_scipy"] = scipy_ms / row["forward_ms_per_image"]
        for gradient in ("autodiff", "implicit"):  # backward alone = (forward+backward) - forward
            fwd = row["forward_ms_per_image"]
            row[f"backward_ratio_{gradient}"] = (row[f"fwd_bwd_{gradient}_ms_per_image"] - fwd) / fwd
        results["rows"].append(row)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(
        f"device: {device}  image {FLAGS.size}x{FLAGS.size}x3  CG iterations {FLAGS.iterations}  "
        f"alpha {FLAGS.alpha}  XLA {FLAGS.jit}"
    )
    print(f"scipy.sparse.linalg.cg (same graph, 3 channels): {scipy_ms:.1f} ms/image")
    print(
        "| batch | forward ms/img | fwd+bwd autodiff | fwd+bwd implicit | vs scipy | bwd/fwd auto | "
        "bwd/fwd impl | bandwidth |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(
            f"| {r['batch']} | {r['forward_ms_per_image']:.1f} | {r['fwd_bwd_autodiff_ms_per_image']:.1f} | "
            f"{r['fwd_bwd_implicit_ms_per_image']:.1f} | {r['speedup_vs_scipy']:.2f}x | "
            f"{r['backward_ratio_autodiff']:.2f} | {r['backward_ratio_implicit']:.2f} | "
            f"{100 * r['bandwidth_fraction']:.0f}% |"
        )
    print(f"copy bandwidth {bandwidth:.1f} GB/s; peak RSS {results['peak_rss_mib']:.0f} MiB")
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(results, f, indent=2)
    logging.info("wrote %s", FLAGS.output)


if __name__ == "__main__":
    app.run(main)
