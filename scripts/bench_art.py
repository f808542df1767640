"""ART's own C&W (``CarliniL2Method``, adversarial-robustness-toolbox 1.20.1) beside ours (issue #22): the same ART
``TensorFlowV2Classifier`` of C4, the same Fashion-MNIST test images, the closest parameters, judged alike.

Ours runs through :class:`smoothadv_tf.integrations.art.CarliniWagnerL2` on that classifier (image for image the
direct ``attacks.carlini_wagner_l2`` call, tests/test_integrations_art.py) under each protocol's parameters
(``attacks.preset("mnist", "carlini_wagner_l2", protocol=...)``). ART gets the same numbers where it has them:
confidence = margin m, learning_rate, binary_search_steps, max_iter = iterations, initial_const (its optimiser is
a line search on the tanh variable, ours Adam, so its learning rate is the line search's first step).

Judged the same way for both: the output rounded to 8 bits; success = misclassified on that 8-bit image, among
the images C4 classified correctly; D̄ = mean L2 distance on [0, 1] over the successes (eq. 20). Time per image
of a warm call (ours has run once on the same batch shape: tracing left out, the cold call is in the JSON;
ART's, run once, after its classifier's forward pass and gradient have run). ART's loop is driven by NumPy and slow, so it runs on the first --art_images images only (one batch);
ours runs on those and on --num_images. Run it on an otherwise idle machine.

    python scripts/bench_art.py                                    # 100 images ours, 20 ART, both protocols
    python scripts/bench_art.py --protocols=paper --art_images=50
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from smoothadv_tf import presets
from smoothadv_tf.cli import check_writable, run_script  # TensorFlow-free: flags are checked before TF loads
from smoothadv_tf.data import load_fashion_mnist
from smoothadv_tf.records import atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 100, "Fashion-MNIST test images attacked by ours", lower_bound=1)
flags.DEFINE_integer("art_images", 20, "the first of those attacked by ART's CarliniL2Method too", lower_bound=1)
flags.DEFINE_list("protocols", ["paper", "strong"], f"C&W parameters of these protocols, of {list(presets.PROTOCOLS)}")
flags.DEFINE_string("checkpoint", None, "C4 .keras file (default: the cached models/c4_fashion_mnist_seed0.keras)")
flags.DEFINE_string("output", "results/bench_art.json", "JSON output path")
flags.DEFINE_float(
    "art_confidence",
    None,
    "ART's confidence (default: our margin m). ART ties it to two things ours keeps apart: the margin in its loss "
    "and the rule for the iterates it keeps; 0 keeps every misclassified iterate, as our strong protocol does",
    lower_bound=0,
)


def check_flags() -> list[str]:
    protocols = list(dict.fromkeys(FLAGS.protocols))
    unknown = [p for p in protocols if p not in presets.PROTOCOLS]
    if unknown or not protocols:
        raise app.UsageError(f"--protocols={','.join(FLAGS.protocols)}: expected some of {list(presets.PROTOCOLS)}")
    if FLAGS.art_images > FLAGS.num_images:
        raise app.UsageError(
            f"--art_images={FLAGS.art_images}: ART attacks the first of the --num_images={FLAGS.num_images} "
            "images, so at most that many"
        )
    check_writable("--output", os.path.dirname(os.path.abspath(FLAGS.output)))  # a file there is replaced
    return protocols


def cpu_name() -> str:
    """The CPU's model name and core count (Linux /proc/cpuinfo), for the record of where the numbers come from."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0]}, {os.cpu_count()} cores" if names else f"{os.cpu_count()} cores"


def art_parameters(ours: dict) -> dict:
    """ART CarliniL2Method's closest parameters to our C&W's `ours`."""
    return {
        "confidence": ours["margin"] if FLAGS.art_confidence is None else FLAGS.art_confidence,
        "learning_rate": ours["learning_rate"],
        "binary_search_steps": ours["binary_search_steps"],
        "max_iter": ours["iterations"],
        "initial_const": ours["initial_const"],
    }


def judge(model, x, y, adversarial) -> dict:
    """8-bit output, success among the originally correct images, D̄ over the successes (the same for both)."""
    quantised = (np.round(np.asarray(adversarial, np.float32) * 255) / 255).astype(np.float32)
    correct = np.argmax(model(x, training=False).numpy(), -1) == y
    success = (np.argmax(model(quantised, training=False).numpy(), -1) != y) & correct
    distortion = np.sqrt(((quantised.astype(np.float64) - x) ** 2).sum(axis=(1, 2, 3)))
    return {
        "images": len(x),
        "correct": int(correct.sum()),
        "successes": int(success.sum()),
        "p_suc": float(success.sum() / max(correct.sum(), 1)),
        "mean_d": float(distortion[success].mean()) if success.any() else float("nan"),
    }


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_twice(attack, x, y) -> tuple[np.ndarray, float, float]:
    """(images, cold seconds, warm seconds): the first call traces, the second is timed as the speed."""
    _, cold = timed(lambda: attack.generate(x, y))
    adversarial, warm = timed(lambda: attack.generate(x, y))
    return adversarial, cold, warm


def main(_):
    protocols = check_flags()
    test = load_fashion_mnist("test")
    x, y = test.images[: FLAGS.num_images], test.labels[: FLAGS.num_images].astype(np.int64)
    count = FLAGS.art_images
    from smoothadv_tf.integrations.common import require

    require("art", "art", "IBM's Adversarial Robustness Toolbox", "bench_art.py")  # one line naming the pip install
    import keras
    from art import __version__ as art_version
    from art.attacks.evasion import CarliniL2Method
    from art.estimators.classification import TensorFlowV2Classifier

    from smoothadv_tf import attacks
    from smoothadv_tf.integrations.art import CarliniWagnerL2
    from smoothadv_tf.models.loading import load_model

    model = load_model("c4", "fashion_mnist", FLAGS.checkpoint)
    classifier = TensorFlowV2Classifier(
        model,
        nb_classes=10,
        input_shape=x.shape[1:],
        clip_values=(0.0, 1.0),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    results = {"device": cpu_name(), "art_version": art_version, "num_images": len(x), "art_images": count, "rows": []}
    for protocol in protocols:
        ours_params = attacks.preset("mnist", "carlini_wagner_l2", protocol)
        peer_params = art_parameters(ours_params)
        peer = CarliniL2Method(classifier, **peer_params, batch_size=count, verbose=False)
        classifier.class_gradient(x[:count], label=y[:count])  # ART's traced forward pass and its gradient, warm
        peer_images, peer_seconds = timed(lambda peer=peer: peer.generate(x[:count], y[:count]))
        peer_cold = peer_warm = peer_seconds  # too slow to run twice; nothing of its own to trace
        ours = CarliniWagnerL2(classifier, protocol=protocol, batch_size=len(x), verbose=False)
        same_images, same_cold, same_warm = run_twice(ours, x[:count], y[:count])
        all_images, all_cold, all_warm = run_twice(ours, x, y)
        rows = [
            ("ART CarliniL2Method", count, peer_images, peer_cold, peer_warm),
            ("smoothadv_tf CarliniWagnerL2, same images", count, same_images, same_cold, same_warm),
            ("smoothadv_tf CarliniWagnerL2", len(x), all_images, all_cold, all_warm),
        ]
        for library, n, images, cold, warm in rows:
            row = {
                "protocol": protocol,
                "library": library,
                "ms_per_image": 1000 * warm / n,
                "cold_ms_per_image": 1000 * cold / n,
                **judge(model, x[:n], y[:n], images),
                "parameters": peer_params if library.startswith("ART") else ours_params,
            }
            results["rows"].append(row)
        speedup = results["rows"][-3]["ms_per_image"] / results["rows"][-2]["ms_per_image"]
        results.setdefault("speedup_same_images", {})[protocol] = speedup

    print(
        f"C&W on C4 (Fashion-MNIST), ART {art_version} CarliniL2Method vs smoothadv_tf, {results['device']}; "
        "judged on 8-bit images; warm ms/image"
    )
    print("| protocol | library | images | ms/image | P_suc | D̄ |")
    print("|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(
            f"| {r['protocol']} | {r['library']} | {r['images']} | {r['ms_per_image']:.0f} | "
            f"{r['p_suc']:.3f} ({r['successes']}/{r['correct']}) | {r['mean_d']:.3f} |"
        )
    for protocol in protocols:
        params = next(r["parameters"] for r in results["rows"] if r["protocol"] == protocol)
        print(f"{protocol}: ART parameters {params}; ours {results['speedup_same_images'][protocol]:.1f}x faster")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    atomic_write(FLAGS.output, json.dumps(results, indent=2))  # a killed run leaves the old file, not half of one
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    run_script(main)
