"""Figures 4/5: for each attack, the image with the strongest distortion D of a white-box run: original,
adversarial, and the perturbation scaled per channel to [0, 1]; titles in green for success, red for failure.

    python scripts/examples.py --dataset=fashion_mnist --model=c4      # after scripts/white_box.py

The adversarial images are recomputed with the parameters the run recorded in its run.json (the attacks are
deterministic), on the model and images the run attacked (checked against its weights and data hashes), so the
figure shows what the table counted. --protocol picks the run (default: paper). The figure also goes to the
run's TensorBoard folder (tb/examples; --notensorboard: not).
"""

import os

import numpy as np
from absl import app, flags

from smoothadv_tf import experiment, records, runner, statistics

FLAGS = flags.FLAGS
experiment.define_common_flags()


def strongest(recorded, attack):
    """(image_id, target) of the largest per-image distortion among successes (or any run, if none)."""
    outcomes = statistics.per_image_outcomes(recorded)[attack]
    successes = {i: d for i, d in outcomes.items() if d is not None}
    if successes:
        image_id = max(successes, key=successes.get)
        run = min(
            (r for r in recorded if r["image_id"] == image_id and r["attack"] == attack and r["success"]),
            key=lambda r: r["distortion"],
        )
    else:
        run = max(
            (r for r in recorded if r["attack"] == attack and r["image_id"] in outcomes), key=lambda r: r["distortion"]
        )
    return run["image_id"], run.get("target")


def main(_):
    config = experiment.config_from_flags()
    if config.trace_iterations:
        raise app.UsageError("--trace_iterations: not used here (one image per attack; trace with white_box.py)")
    out_dir = config.output_path("white_box")
    path = os.path.join(out_dir, "records.jsonl")
    if not os.path.exists(path):
        raise app.UsageError(f"{path} not found: run scripts/white_box.py with the same flags first")
    import matplotlib

    from smoothadv_tf import attacks as attacks_lib  # TensorFlow, once the flags are checked
    from smoothadv_tf.models.loading import fit_labels

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    identity = records.read_run_identity(os.path.join(out_dir, "run.json"))
    recorded = records.read_records(path)
    attacks = [a for a in config.attacks if a in statistics.per_image_outcomes(recorded)]
    if not attacks:
        raise app.UsageError(f"{path}: none of --attacks={','.join(config.attacks)} was recorded by that run")
    dataset = runner.load_data(config)
    if records.dataset_fingerprint(dataset) != identity["data"]:
        raise app.UsageError(f"--dataset/--data_dir: not the images the run in {out_dir} attacked")
    model = runner.load_model(config)
    if records.model_fingerprint(model) != identity["weights"]:
        raise app.UsageError(
            f"--checkpoint/--seed/--c4_epochs: not the model the run in {out_dir} attacked (its weights differ); "
            "pass the flags that run was made with"
        )
    dataset = fit_labels(model, dataset, config.dataset, config.model)
    index = {image_id: k for k, image_id in enumerate(dataset.ids)}
    fig, axes = plt.subplots(len(attacks), 3, figsize=(6.6, 2.3 * len(attacks)), squeeze=False)
    for row, attack in enumerate(attacks):
        image_id, target = strongest(recorded, attack)
        params = records.recorded_params(out_dir, attack, target)
        k = index[image_id]
        x, y = dataset.images[k : k + 1], dataset.labels[k : k + 1]
        with runner.device_scope(config):
            result = attacks_lib.run_attack(attack, model, x, y, **params)
        r = result.adversarial[0] - x[0]
        lo, hi = r.min(axis=(0, 1)), r.max(axis=(0, 1))
        scaled = (r - lo) / np.where(hi > lo, hi - lo, 1.0)
        color = "green" if result.success[0] else "red"
        panels = [
            (x[0], f"original {image_id}"),
            (result.adversarial[0], f"{attacks_lib.DISPLAY_NAMES[attack]} ({config.protocol})"),
            (scaled, f"D = {result.distortion[0]:.2f}"),
        ]
        for col, (img, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, color=color if col else "black", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    target_path = os.path.join(out_dir, "examples.png")
    fig.savefig(target_path + ".tmp.png", dpi=110)
    os.replace(target_path + ".tmp.png", target_path)
    print(f"wrote {target_path}")
    logdir = config.tensorboard_path(out_dir)
    if logdir is not None:
        from smoothadv_tf import tensorboard_log

        print(f"and {tensorboard_log.write_points(logdir, 'examples', figures={'examples': target_path})}")


if __name__ == "__main__":
    experiment.run_script(main)
