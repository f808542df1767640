"""Figure 1: adversarial magnification (Appendix A, eq. 22) of an original and its adversarial examples.

    python scripts/magnify.py --images_dir=results/white_box/fashion_mnist-c4/images --image_id=test-00000
    python scripts/magnify.py --image=astronaut            # a scikit-image photo or a PNG/JPEG path

With --images_dir (written by white_box.py --save_images) the panel shows the original, mag(original) and
mag(adversarial) for every attack folder holding that image. All magnified images share one min/max.
"""

import glob
import os

import numpy as np
from absl import app, flags

from smoothadv_tf.data import read_image
from smoothadv_tf.magnify import magnify, to_display

FLAGS = flags.FLAGS
flags.DEFINE_string("images_dir", None, "folder with original/ and one sub-folder per attack run")
flags.DEFINE_string("image_id", None, "image id (file stem) inside --images_dir")
flags.DEFINE_string("image", None, "a single image: scikit-image photo name or a file path")
flags.DEFINE_float("beta", 0.8, "β of eq. 22")
flags.DEFINE_float("sigma_d", 5.0, "domain σ of the bilateral filters (pixels)")
flags.DEFINE_float("sigma_r", 0.2, "range σ of the bilateral filters ([0,1] intensities)")
flags.DEFINE_string("output", None, "output PNG (default: next to the inputs, or results/magnify_<name>.png)")


def load(path_or_name: str) -> np.ndarray:
    if os.path.exists(path_or_name):
        from PIL import Image

        channels = 1 if Image.open(path_or_name).mode in ("L", "I", "I;16") else 3
        return read_image(path_or_name, channels=channels)
    from skimage import data as skdata

    if not hasattr(skdata, path_or_name):
        raise app.UsageError(f"--image={path_or_name}: neither a file nor a scikit-image photo")
    img = getattr(skdata, path_or_name)()
    img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
    return img.astype(np.float32) / 255.0


def attack_runs_to_show(images_dir: str, image_id: str) -> list[str]:
    """One folder per attack: the run the protocol keeps for this image (its least-distortion success, from
    the experiment's records.jsonl beside images/), else the attack's last run."""
    from smoothadv_tf import attacks as attacks_lib
    from smoothadv_tf import evaluation

    folders = sorted(
        os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(images_dir, "*", f"{image_id}.png"))
    )
    records_path = os.path.join(os.path.dirname(os.path.normpath(images_dir)), "records.jsonl")
    records = evaluation.read_records(records_path) if os.path.exists(records_path) else []
    chosen = []
    for attack in attacks_lib.ATTACKS:
        runs = [f for f in folders if f == attack or f.startswith(attack + "-")]
        if not runs:
            continue
        wins = [r for r in records if r["image_id"] == image_id and r["attack"] == attack and r.get("success")]
        if wins:
            best = min(wins, key=lambda r: r["distortion"])
            name = attack if best["target"] is None else f"{attack}-{best['target']:g}"
            if name in runs:
                chosen.append(name)
                continue
        chosen.append(runs[-1])
    return chosen


def main(_):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if FLAGS.images_dir:
        if not FLAGS.image_id:
            raise app.UsageError("--images_dir needs --image_id")
        original = os.path.join(FLAGS.images_dir, "original", f"{FLAGS.image_id}.png")
        if not os.path.exists(original):
            raise app.UsageError(f"{original} not found")
        panels = [("original", load(original))]
        for name in attack_runs_to_show(FLAGS.images_dir, FLAGS.image_id):
            panels.append((name, load(os.path.join(FLAGS.images_dir, name, f"{FLAGS.image_id}.png"))))
        output = FLAGS.output or os.path.join(FLAGS.images_dir, f"magnify_{FLAGS.image_id}.png")
    elif FLAGS.image:
        panels = [("original", load(FLAGS.image))]
        output = FLAGS.output or os.path.join("results", f"magnify_{os.path.basename(FLAGS.image)}.png")
    else:
        raise app.UsageError("give --images_dir/--image_id or --image")
    images = np.stack([p[1] for p in panels])
    mags = to_display(magnify(images, FLAGS.beta, FLAGS.sigma_d, FLAGS.sigma_r).numpy())
    shown = [(panels[0][0], panels[0][1])] + [(f"mag({name})", m) for (name, _), m in zip(panels, mags)]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 2.5), squeeze=False)
    for ax, (title, img) in zip(axes[0], shown):
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    fig.savefig(output + ".tmp.png", dpi=110)
    os.replace(output + ".tmp.png", output)
    print(f"wrote {output}")


if __name__ == "__main__":
    app.run(main)
