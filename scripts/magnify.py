"""Figure 1: adversarial magnification (Appendix A, eq. 22) of an original and its adversarial examples.

    python scripts/magnify.py --images_dir=results/white_box/fashion_mnist-c4/images --image_id=test-00000
    python scripts/magnify.py --image=astronaut            # a scikit-image photo or a PNG/JPEG path

With --images_dir (written by white_box.py --save_images) the panel shows the original, mag(original) and
mag(adversarial) for every attack of that run: the ε run its records kept for the image (least-distortion
success), captioned with the recorded D and outcome; the title names the run's model and protocol. All
magnified images share one min/max.
"""

import glob
import os

import numpy as np
from absl import app, flags

from smoothadv_tf.cli import check_writable, run_script
from smoothadv_tf.data import read_image

FLAGS = flags.FLAGS
flags.DEFINE_string("images_dir", None, "folder with original/ and one sub-folder per attack run")
flags.DEFINE_string("image_id", None, "image id (file stem) inside --images_dir")
flags.DEFINE_string("image", None, "a single image: scikit-image photo name or a file path")
flags.DEFINE_float("beta", 0.8, "β of eq. 22")
flags.DEFINE_float("sigma_d", 5.0, "domain σ of the bilateral filters (pixels)")
flags.DEFINE_float("sigma_r", 0.2, "range σ of the bilateral filters ([0,1] intensities)")
flags.DEFINE_string("output", None, "output PNG (default: next to the inputs, or results/magnify_<name>.png)")
flags.register_validator("beta", lambda v: 0 <= v <= 1, "must be in [0, 1]")
for _name in ("sigma_d", "sigma_r"):
    flags.register_validator(_name, lambda v: v > 0, "must be positive")


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


def run_of(images_dir: str) -> tuple[dict, list[dict]]:
    """The run that wrote `images_dir` (white_box.py --save_images): its run.json and its records (the records
    file, or the shard files), from the folder holding images/."""
    from smoothadv_tf.records import read_records, read_run_identity

    run_dir = os.path.dirname(os.path.normpath(images_dir))
    identity_path = os.path.join(run_dir, "run.json")
    if not os.path.exists(identity_path):
        raise app.UsageError(f"--images_dir={images_dir}: no run.json in {run_dir}; give the images/ folder of a run")
    identity = read_run_identity(identity_path)
    paths = [os.path.join(run_dir, "records.jsonl")]
    if not os.path.exists(paths[0]):
        paths = sorted(glob.glob(os.path.join(run_dir, "records-shard*.jsonl")))
    if not paths:
        raise app.UsageError(f"--images_dir={images_dir}: no records in {run_dir}")
    return identity, [r for p in paths for r in read_records(p)]


def attack_runs_to_show(images_dir: str, image_id: str, records: list[dict]) -> list[tuple[str, str]]:
    """(folder, caption) per attack: the run the protocol kept for this image (its least-distortion success,
    from the run's records), else its last run, captioned with D and the outcome the records hold."""
    from smoothadv_tf import presets
    from smoothadv_tf.statistics import best_records

    folders = sorted(
        os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(images_dir, "*", f"{image_id}.png"))
    )
    kept = best_records(records)  # the §5.1 rule: least-distortion success per image
    chosen = []
    for attack in presets.ATTACK_NAMES:
        runs = [f for f in folders if f == attack or f.startswith(attack + "-")]
        mine = [r for r in records if r["image_id"] == image_id and r["attack"] == attack and "success" in r]
        if not runs or not mine:
            continue
        best = kept.get(attack, {}).get(image_id) or max(mine, key=lambda r: r["target"] or 0)
        name = attack if best["target"] is None else f"{attack}-{best['target']:g}"
        if name not in runs:
            raise app.UsageError(f"{images_dir}/{name}/{image_id}.png missing: the images and the records disagree")
        outcome = "success" if best["success"] else "failure"
        ssim = f", SSIM={best['ssim']:.3f}" if best.get("ssim") is not None else ""  # runs before SSIM: D only
        chosen.append((name, f"{presets.DISPLAY_NAMES[attack]}\nD={best['distortion']:.2f}{ssim}, {outcome}"))
    return chosen


def main(_):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if FLAGS.output:
        check_writable("--output", FLAGS.output)
    if FLAGS.images_dir and FLAGS.image:
        raise app.UsageError("give either --images_dir/--image_id or --image, not both")
    if FLAGS.images_dir:
        if not FLAGS.image_id:
            raise app.UsageError("--images_dir needs --image_id")
        original = os.path.join(FLAGS.images_dir, "original", f"{FLAGS.image_id}.png")
        if not os.path.exists(original):
            raise app.UsageError(f"{original} not found")
        identity, records = run_of(FLAGS.images_dir)
        panels = [("original", load(original))]
        for name, caption in attack_runs_to_show(FLAGS.images_dir, FLAGS.image_id, records):
            panels.append((caption, load(os.path.join(FLAGS.images_dir, name, f"{FLAGS.image_id}.png"))))
        suptitle = f"{identity['dataset']}-{identity['model']}, {identity['protocol']} protocol: {FLAGS.image_id}"
        output = FLAGS.output or os.path.join(FLAGS.images_dir, f"magnify_{FLAGS.image_id}.png")
    elif FLAGS.image:
        panels = [("original", load(FLAGS.image))]
        suptitle = FLAGS.image
        output = FLAGS.output or os.path.join("results", f"magnify_{os.path.basename(FLAGS.image)}.png")
    else:
        raise app.UsageError("give --images_dir/--image_id or --image")
    from smoothadv_tf.magnify import magnify, to_display  # TensorFlow, once the inputs are checked

    images = np.stack([p[1] for p in panels])
    mags = to_display(magnify(images, FLAGS.beta, FLAGS.sigma_d, FLAGS.sigma_r).numpy())
    shown = [panels[0]] + [(f"mag: {name}", m) for (name, _), m in zip(panels, mags)]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 2.5), squeeze=False)
    for ax, (title, img) in zip(axes[0], shown):
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    fig.savefig(output + ".tmp.png", dpi=110)
    os.replace(output + ".tmp.png", output)
    print(f"wrote {output}")


if __name__ == "__main__":
    run_script(main)
