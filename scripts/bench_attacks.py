"""Our C&W and PGD₂ side by side with foolbox 3 on the same model, images and budget; and the cost of
smoothing inside C&W on InceptionV3 (sC&W / C&W time per iteration).

    python scripts/bench_attacks.py --num_images=100
    python scripts/bench_attacks.py --skip_peer --inception_images=1      # only the sC&W/C&W ratio

Prints tables (time per image, P_suc, mean D on raw and on 8-bit-quantised outputs) and writes JSON.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from smoothadv_tf import attacks, experiment
from smoothadv_tf.data import load_fashion_mnist

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 100, "Fashion-MNIST test images")
flags.DEFINE_string("checkpoint", None, "C4 .keras file (default: the cached models/c4_fashion_mnist.keras)")
flags.DEFINE_integer("binary_search_steps", 5, "C&W binary-search steps (both libraries)")
flags.DEFINE_integer("iterations", 100, "C&W iterations per binary step (both libraries)")
flags.DEFINE_boolean("skip_peer", False, "skip the foolbox comparison")
flags.DEFINE_integer("inception_images", 1, "images for the sC&W / C&W per-iteration timing (0 = skip)")
flags.DEFINE_string("output", "results/bench_attacks.json", "JSON output path")


def stats(model, x, y, adv):
    """P_suc and mean D on raw and on quantised outputs, over the originally correct images."""
    out = {}
    correct = np.argmax(model(x).numpy(), -1) == y
    for label, images in (("raw", adv), ("quantised", np.round(adv * 255) / 255)):
        success = (np.argmax(model(images).numpy(), -1) != y) & correct
        d = np.sqrt(((images - x) ** 2).sum(axis=(1, 2, 3)))
        out[label] = {"p_suc": float(success.sum() / correct.sum()), "mean_d": float(d[success].mean())}
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def peer_comparison(model, x, y):
    import foolbox as fb

    fmodel = fb.TensorFlowModel(model, bounds=(0, 1))
    budget = dict(
        binary_search_steps=FLAGS.binary_search_steps,
        steps=FLAGS.iterations,
        stepsize=0.1,
        confidence=1.0,
        initial_const=15.0,
        abort_early=False,
    )
    ours_budget = dict(
        binary_search_steps=FLAGS.binary_search_steps,
        iterations=FLAGS.iterations,
        learning_rate=0.1,
        margin=1.0,
        initial_const=15.0,
        abort_early=False,
        quantize=False,
    )
    xt, yt = tf.constant(x), tf.constant(y)
    rows = []

    def foolbox_cw():
        return fb.attacks.L2CarliniWagnerAttack(**budget)(fmodel, xt, yt, epsilons=None)[1].numpy()

    def foolbox_pgd():
        attack = fb.attacks.L2PGD(abs_stepsize=3.0, steps=10, random_start=False)
        return attack(fmodel, xt, yt, epsilons=5.0)[1].numpy()

    runs = [
        ("C&W", "foolbox 3.3.4", foolbox_cw),
        ("C&W", "smoothadv_tf", lambda: attacks.carlini_wagner_l2(model, x, y, **ours_budget).adversarial),
        ("PGD2 (10 steps, no early stop)", "foolbox 3.3.4", foolbox_pgd),
        (
            "PGD2 (10 steps, no early stop)",
            "smoothadv_tf",
            lambda: (
                attacks.pgd2(
                    model, x, y, epsilon=5.0, step=3.0, iterations=10, early_stop=False, quantize=False
                ).adversarial
            ),
        ),
    ]
    attacks.carlini_wagner_l2(model, x, y, **ours_budget)  # trace (per batch shape) outside the timing
    attacks.pgd2(model, x, y, epsilon=5.0, step=3.0, iterations=10, early_stop=False, quantize=False)
    for attack, library, fn in runs:
        adv, seconds = timed(fn)
        rows.append(
            {
                "attack": attack,
                "library": library,
                "ms_per_image": 1000 * seconds / len(x),
                **{f"{k}_{m}": v[m] for k, v in stats(model, x, y, adv).items() for m in v},
            }
        )
    return rows


def smoothing_cost_on_inception(num_images):
    """sC&W / C&W seconds per iteration on InceptionV3 at 299x299 (random weights: only timing matters)."""
    from smoothadv_tf.models import slim

    model = slim.inception_v3()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (num_images, 299, 299, 3)).astype(np.float32)
    y = np.argmax(model(x).numpy(), -1)
    out = {}
    for name, extra in (
        ("carlini_wagner_l2", {}),
        ("smooth_carlini_wagner_l2/autodiff", {"cg_gradient": "autodiff"}),
        ("smooth_carlini_wagner_l2/implicit", {"cg_gradient": "implicit"}),
    ):
        fn = attacks.ATTACKS[name.split("/")[0]]
        params = attacks.preset("imagenet", name.split("/")[0], binary_search_steps=1, abort_early=False, **extra)
        per_run = {}
        for iterations in (3, 11):
            params["iterations"] = iterations
            fn(model, x, y, **params)  # trace
            per_run[iterations] = timed(lambda p=dict(params), f=fn: f(model, x, y, **p))[1]
        out[name] = (per_run[11] - per_run[3]) / 8 / num_images  # seconds per iteration per image
    return out


def main(_):
    results = {"device": "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"}
    if not FLAGS.skip_peer:
        model = experiment.load_model("c4", "fashion_mnist", FLAGS.checkpoint)
        test = load_fashion_mnist("test")
        x, y = test.images[: FLAGS.num_images], test.labels[: FLAGS.num_images]
        rows = peer_comparison(model, x, y)
        results["peer"] = rows
        print(
            f"C4 on Fashion-MNIST, {len(x)} images, {results['device']}; C&W budget "
            f"{FLAGS.binary_search_steps} binary steps x {FLAGS.iterations} iterations, lr 0.1, margin 1, c0 15"
        )
        print("| attack | library | ms/image | P_suc raw | D̄ raw | P_suc 8-bit | D̄ 8-bit |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['attack']} | {r['library']} | {r['ms_per_image']:.1f} | {r['raw_p_suc']:.3f} | "
                f"{r['raw_mean_d']:.3f} | {r['quantised_p_suc']:.3f} | {r['quantised_mean_d']:.3f} |"
            )
        cw = {r["library"]: r for r in rows if r["attack"] == "C&W"}
        speedup = cw["foolbox 3.3.4"]["ms_per_image"] / cw["smoothadv_tf"]["ms_per_image"]
        results["cw_speedup_vs_foolbox"] = speedup
        print(f"C&W speed-up over foolbox: {speedup:.2f}x")
    if FLAGS.inception_images:
        cost = smoothing_cost_on_inception(FLAGS.inception_images)
        results["inception_seconds_per_iteration"] = cost
        base = cost["carlini_wagner_l2"]
        for name, seconds in cost.items():
            print(f"InceptionV3 299x299 {name}: {1000 * seconds:.0f} ms/iteration/image ({seconds / base:.2f}x C&W)")
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
