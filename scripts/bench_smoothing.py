"""Benchmark the batched CG smoothing (s_α, eq. 8) against scipy.sparse.linalg.cg on the identical graph.

Prints a table and writes JSON: ms per image for the forward solve and for forward+backward (autodiff and
implicit gradients), per batch size, next to scipy's CG (same W, same iteration count, one channel at a time),
plus peak process memory and the forward pass's effective bandwidth next to a measured main-memory copy
bandwidth (over 100 % means the chunked CG vectors stay in the CPU cache).
The guide's graph and s_α(1) are built once per batch ("setup", reported apart); every timed function runs
round-robin with the others, so that a slow spell of the machine hits all of them alike.

    python scripts/bench_smoothing.py --size=299 --batch_sizes=1,16 --iterations=50
"""

from __future__ import annotations

import json
import os
import resource
import time

# scipy's CG calls BLAS on 89401-long vectors, too short to gain from threads; OpenBLAS's idle threads
# otherwise spin after each call and steal a core from whatever is timed next (scipy was also slower).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as sla  # noqa: E402
from absl import flags, logging  # noqa: E402

from smoothadv_tf.cli import run_script  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 299, "image side (pixels)", lower_bound=2)
flags.DEFINE_list("batch_sizes", ["1", "16"], "batch sizes to time")
flags.register_validator(
    "batch_sizes", lambda v: bool(v) and all(b.isdigit() and int(b) >= 1 for b in v), "must be positive integers"
)
flags.DEFINE_integer("iterations", 50, "CG iterations", lower_bound=1)
flags.DEFINE_float("alpha", 0.997, "smoothing α (ImageNet preset)")
flags.register_validator("alpha", lambda v: 0 <= v < 1, "must be in [0, 1)")
flags.DEFINE_integer("repeats", 7, "timed rounds (median reported)", lower_bound=1)
flags.DEFINE_string("output", "results/bench_smoothing.json", "JSON output path")
flags.DEFINE_boolean(
    "crossover", False, "instead: solver='auto''s cost model against measured dense / Chebyshev times over image sizes"
)
flags.DEFINE_list("crossover_sizes", ["6", "8", "10", "12", "16", "20", "28"], "image sides for --crossover")
flags.register_validator(
    "crossover_sizes", lambda v: bool(v) and all(s.isdigit() and int(s) >= 2 for s in v), "must be integers >= 2"
)
flags.DEFINE_integer("crossover_batch", 20, "images per batch for --crossover", lower_bound=1)
flags.DEFINE_integer("applications", 20, "solves per image after the set-up, for --crossover", lower_bound=0)


def real_photos(size: int, count: int) -> np.ndarray:
    """scikit-image's bundled photos, resized to size x size (real images, as the paper's guide x_o)."""
    from skimage import data as skdata
    from skimage.transform import resize

    names = ["astronaut", "chelsea", "coffee", "rocket"]
    photos = [resize(getattr(skdata, n)(), (size, size), anti_aliasing=True) for n in names]
    return np.stack([photos[i % len(photos)] for i in range(count)]).astype(np.float32)


def interleaved_ms(fns: dict, repeats: int, block: int = 3) -> dict:
    """Median wall time (ms) of each function, timed round-robin so that machine noise hits all alike.

    Each round times `block` back-to-back calls of each function (steady state, as in a loop).
    """
    for fn in fns.values():
        fn()  # compile / warm up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(block):
                fn()
            times[name].append((time.perf_counter() - t) / block)
    return {name: 1000.0 * float(np.median(ts)) for name, ts in times.items()}


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


def scipy_cg(x: np.ndarray, z: np.ndarray, alpha: float, iterations: int):
    """A function running scipy's CG on image 0's L_α (the identical graph), one channel at a time."""
    from smoothadv_tf.smoothing import Smoother

    smoother = Smoother(x[:1], alpha=alpha, iterations=1)
    w = smoother.graph.to_scipy(0)
    deg = np.maximum(np.asarray(w.sum(axis=1)).ravel(), 1e-20)
    d = sp.diags(1.0 / np.sqrt(deg))
    lap = ((sp.eye(w.shape[0]) - alpha * (d @ w @ d)) / (1 - alpha)).tocsr()
    rhs = [z[0, ..., c].ravel().astype(np.float64) for c in range(z.shape[-1])]

    def run():
        for b in rhs:
            sla.cg(lap, b, rtol=0.0, atol=0.0, maxiter=iterations)

    return run


def crossover(alpha: float) -> dict:
    """solver="auto"'s cost model beside the measured times of its two candidates: per image, the set-up (graph,
    s_α(1), and for dense the Cholesky factor) plus FLAGS.applications solves, on real photos at each size, the
    set-up cache bypassed (each timed run builds it). Prints the predicted and measured ms, the model's choice
    and whether it was the faster one."""
    import tensorflow as tf

    from smoothadv_tf import smoothing

    batch, apps = FLAGS.crossover_batch, FLAGS.applications
    rows = []
    for side in (int(s) for s in FLAGS.crossover_sizes):
        x = tf.constant(real_photos(side, batch))
        z = tf.constant(np.random.default_rng(0).standard_normal(x.shape).astype(np.float32))
        iterations = smoothing.chebyshev_iterations(alpha)

        def traced(solver, x=x, z=z, iterations=iterations, apps=apps):
            @tf.function  # set-up and solves in one graph, as inside an attack's traced loop
            def run():
                setup = smoothing._build_setup(x, alpha, solver, iterations, 0.0, {})
                s = smoothing.Smoother(x, alpha=alpha, solver=solver, iterations=iterations, setup=setup)
                out = tf.zeros_like(z)
                for _ in range(apps):  # chained, so that no solve is pruned from the graph as unused
                    out = s(z + 1e-3 * out, stop_gradient=True)
                return tf.reduce_sum(out) + tf.reduce_sum(setup.normaliser)

            return lambda: float(run())

        runs = {s: traced(s) for s in ("dense", "chebyshev")}
        measured = interleaved_ms(runs, FLAGS.repeats, block=1)
        setup_only = interleaved_ms({s: traced(s, apps=0) for s in runs}, FLAGS.repeats, block=1)
        shape = tuple(x.shape)
        predicted = {s: 1000 * smoothing.predicted_seconds(s, shape, alpha, apps) for s in ("dense", "chebyshev")}
        choice = smoothing.resolve_solver(shape, alpha, apps)[0]
        rows.append(
            {
                "side": side,
                "measured_ms_per_image": {s: v / batch for s, v in measured.items()},
                "measured_setup_ms_per_image": {s: v / batch for s, v in setup_only.items()},
                "predicted_ms_per_image": predicted,
                "choice": choice,
                "choice_was_faster": measured[choice] <= min(measured.values()),
            }
        )
    print(
        f"solver='auto' cost model, alpha {alpha}, {batch} photos x 3 channels, set-up + {apps} solves per image, "
        f"Chebyshev at {smoothing.chebyshev_iterations(alpha)} iterations (error <= {smoothing.AUTO_TOLERANCE:g})"
    )
    print(
        "| side | dense measured | dense predicted | Chebyshev measured | Chebyshev predicted | auto picks | faster? |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m, p = r["measured_ms_per_image"], r["predicted_ms_per_image"]
        print(
            f"| {r['side']} | {m['dense']:.3f} | {p['dense']:.3f} | {m['chebyshev']:.3f} | {p['chebyshev']:.3f} | "
            f"{r['choice']} | {'yes' if r['choice_was_faster'] else 'no'} |"
        )
    fitted = fit_cost_model(rows, alpha, batch, apps)
    print("constants fitted to these measurements (smoothing.COST_MODEL holds the ones auto uses):")
    print(", ".join(f"{k} {v:.3g}" for k, v in fitted.items()))
    return {"alpha": alpha, "batch": batch, "applications": apps, "rows": rows, "fitted": fitted}


def fit_cost_model(rows: list, alpha: float, batch: int, apps: int) -> dict:
    """Least-squares constants of smoothing.predicted_seconds from the crossover measurements (3 channels, one
    joint graph): Chebyshev's set-up + apps solves against (values, 1 / batch); dense's set-up alone against
    (n³, n²) and its solves (with set-up minus without) against (n², 1)."""
    from smoothadv_tf import smoothing

    k = smoothing.chebyshev_iterations(alpha)
    sides = np.array([r["side"] for r in rows], float)
    n = sides**2
    cheb = np.array([r["measured_ms_per_image"]["chebyshev"] for r in rows]) / 1000 / ((apps + 1) * k)
    dense_setup = np.array([r["measured_setup_ms_per_image"]["dense"] for r in rows]) / 1000
    dense_solves = np.array([r["measured_ms_per_image"]["dense"] for r in rows]) / 1000 - dense_setup
    from scipy.optimize import nnls  # costs are not negative

    # relative errors: every size counts, not only the largest
    def fit(columns, target):
        a = np.stack(columns, 1)
        return nnls(a / target[:, None], np.ones_like(target))[0]

    value, step = fit([3 * n, np.full_like(n, 1 / batch)], cheb)
    factor, stencil, setup = fit([n**3, n**2, np.ones_like(n)], dense_setup)
    solve, call = fit([n**2, np.ones_like(n)], dense_solves / max(apps, 1))
    return {
        "CHEB_VALUE_S": float(value),
        "CHEB_STEP_S": float(step),
        "DENSE_FACTOR_S": float(factor),
        "DENSE_STENCIL_S": float(stencil),
        "DENSE_SETUP_S": float(setup),
        "DENSE_SOLVE_S": float(solve),
        "DENSE_CALL_S": float(call),
    }


def main(_):
    import tensorflow as tf

    if FLAGS.crossover:
        result = crossover(FLAGS.alpha)
        os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
        with open(FLAGS.output, "w") as f:
            json.dump(result, f, indent=2)
        return

    from smoothadv_tf.smoothing import Smoother

    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU ({gpus[0].name})" if gpus else f"CPU ({os.cpu_count()} cores)"
    results = {
        "device": device,
        "size": FLAGS.size,
        "iterations": FLAGS.iterations,
        "alpha": FLAGS.alpha,
        "rows": [],
    }
    bandwidth = copy_bandwidth_gbs()
    results["copy_bandwidth_gbs"] = bandwidth
    x_all = real_photos(FLAGS.size, max(int(b) for b in FLAGS.batch_sizes))
    z_all = np.random.default_rng(0).standard_normal(x_all.shape).astype(np.float32)
    options = dict(alpha=FLAGS.alpha, iterations=FLAGS.iterations)
    fns = {"scipy": scipy_cg(x_all, z_all, FLAGS.alpha, FLAGS.iterations)}
    setup_ms = {}
    for batch in (int(b) for b in FLAGS.batch_sizes):
        x, z = tf.constant(x_all[:batch]), tf.constant(z_all[:batch])

        # The guide's graph and normaliser s_α(1) are built once per batch of guide images (setup), then
        # reused for every solve, as in sPGD₂ / sC&W: time them apart.
        def build(x=x):
            built = {g: Smoother(x, gradient=g, **options) for g in ("autodiff", "implicit")}
            float(tf.reduce_sum(built["autodiff"]._normaliser))  # wait for the s_α(1) solve
            return built

        build()  # the first build traces and compiles the s_α(1) solve for this shape
        t = time.perf_counter()
        smoothers = build()
        setup_ms[batch] = 1000.0 * (time.perf_counter() - t) / 2

        # The inner solves are XLA-compiled already; the outer tf.function only removes eager overhead.
        forward = tf.function(lambda z, s=smoothers["autodiff"]: s.solve(z, stop_gradient=True))

        @tf.function
        def recording_forward(z, s=smoothers["autodiff"]):
            with tf.GradientTape() as tape:  # a tape is watching: autodiff records its trajectory
                tape.watch(z)
                return s.solve(z)

        fns[f"forward/{batch}"] = lambda z=z, f=forward: f(z).numpy()
        fns[f"recording_forward/{batch}"] = lambda z=z, f=recording_forward: f(z).numpy()
        for gradient, smoother in smoothers.items():

            @tf.function
            def forward_backward(z, s=smoother):
                with tf.GradientTape() as tape:
                    tape.watch(z)
                    out = s.solve(z)
                    loss = tf.reduce_sum(out * out)
                return tape.gradient(loss, z)

            fns[f"{gradient}/{batch}"] = lambda z=z, f=forward_backward: f(z).numpy()
    ms = interleaved_ms(fns, FLAGS.repeats)
    scipy_ms = ms["scipy"]
    results["scipy_cg_ms_per_image"] = scipy_ms

    for batch in (int(b) for b in FLAGS.batch_sizes):
        fwd = ms[f"forward/{batch}"] / batch
        row = {
            "batch": batch,
            "setup_ms_per_image": setup_ms[batch] / batch,
            "forward_ms_per_image": fwd,
            "recording_forward_ms_per_image": ms[f"recording_forward/{batch}"] / batch,
            "speedup_vs_scipy": scipy_ms / fwd,
        }
        for gradient in ("autodiff", "implicit"):
            row[f"fwd_bwd_{gradient}_ms_per_image"] = ms[f"{gradient}/{batch}"] / batch
            # backward alone = (forward+backward) - plain forward: autodiff's recording overhead counts as backward
            row[f"backward_ratio_{gradient}"] = (row[f"fwd_bwd_{gradient}_ms_per_image"] - fwd) / fwd
        # Bytes a CG step must touch at least: ~10 image-sized float32 arrays read or written.
        bytes_per_image = FLAGS.iterations * 10 * 4 * x_all[0].size
        row["effective_gbs"] = bytes_per_image / (fwd / 1000) / 1e9
        row["bandwidth_fraction"] = row["effective_gbs"] / bandwidth
        results["rows"].append(row)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"device: {device}  image {FLAGS.size}x{FLAGS.size}x3  CG iterations {FLAGS.iterations}  alpha {FLAGS.alpha}")
    print(f"scipy.sparse.linalg.cg (same graph, 3 channels): {scipy_ms:.1f} ms/image (timed interleaved with ours)")
    print(
        "| batch | setup ms/img | forward ms/img | recording fwd | fwd+bwd autodiff | fwd+bwd implicit | vs scipy | "
        "bwd/fwd auto | bwd/fwd impl | effective GB/s (vs copy) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(
            f"| {r['batch']} | {r['setup_ms_per_image']:.1f} | {r['forward_ms_per_image']:.1f} | "
            f"{r['recording_forward_ms_per_image']:.1f} | {r['fwd_bwd_autodiff_ms_per_image']:.1f} | "
            f"{r['fwd_bwd_implicit_ms_per_image']:.1f} | {r['speedup_vs_scipy']:.2f}x | "
            f"{r['backward_ratio_autodiff']:.2f} | {r['backward_ratio_implicit']:.2f} | "
            f"{r['effective_gbs']:.0f} ({100 * r['bandwidth_fraction']:.0f}%) |"
        )
    print(f"main-memory copy bandwidth {bandwidth:.1f} GB/s; peak RSS {results['peak_rss_mib']:.0f} MiB")
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(results, f, indent=2)
    logging.info("wrote %s", FLAGS.output)


if __name__ == "__main__":
    run_script(main)
