"""What a run shows: the tables (``table.md``, ``table.csv``, ``summary.json``), the operating characteristic
plot (Fig. 2/3) and the adversarial images as PNGs.

:func:`report` writes them for a run folder from its records; a new output format (a plot, TensorBoard
summaries) goes here, reading records and :mod:`smoothadv_tf.statistics`, never the other way round.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

import numpy as np
from absl import logging

from smoothadv_tf import presets
from smoothadv_tf.records import atomic_write, read_records
from smoothadv_tf.statistics import PERCEPTIBILITY, operating_characteristic, per_image_outcomes, summarize


def report(
    records,
    out_dir: str,
    title: str,
    evaluated_on: str = "self",
    suffix: str = "",
    tensorboard_dir: str | None = None,
) -> str:
    """Write the tables and the operating characteristic, and with `tensorboard_dir` their TensorBoard
    summary (:func:`smoothadv_tf.tensorboard_log.write_summary`: ``summary/``, ``summary_<suffix>/``);
    return the markdown table. Records of fewer images than the folder holds (a smaller rerun,
    :func:`smoothadv_tf.runner.records_of`) get theirs under ``first<N>/`` (in the TensorBoard folder too):
    the folder's own tables, over all its images, are left as they were."""
    summary = summarize(records, evaluated_on)
    asked = {r["image_id"] for r in records}
    path = os.path.join(out_dir, "records.jsonl")
    if os.path.exists(path) and {r["image_id"] for r in read_records(path)} - asked:
        out_dir = subset_dir(out_dir, len(asked))
        if tensorboard_dir is not None:
            tensorboard_dir = subset_dir(tensorboard_dir, len(asked))
    target_dir = os.path.join(out_dir, suffix) if suffix else out_dir
    table = write_summary(summary, target_dir, title)
    plot = os.path.join(target_dir, "operating_characteristic.png")
    plot_operating_characteristic(records, plot, evaluated_on, title)
    if tensorboard_dir is not None:
        from smoothadv_tf.tensorboard_log import write_summary as write_events

        write_events(tensorboard_dir, records, summary, plot, f"summary_{suffix}" if suffix else "summary")
    logging.info("wrote %s", target_dir)
    return table


def subset_dir(out_dir: str, images: int) -> str:
    """Where a run's tables over its first `images` images go when the folder holds more: ``first<N>/``."""
    return os.path.join(out_dir, f"first{images}")


def _perceptibility_cell(row: dict, field: str, fmt: str) -> str:
    """A table cell: the mean; "n/a" when no success carries the field (records of an older version, or no
    successes); "mean (k/n)" when only k of the n successes carry it."""
    count = row.get(f"n_{field}", 0)
    if not count:
        return "n/a"
    cell = format(row[f"mean_{field}"], fmt)
    return cell if count == row["successes"] else f"{cell} ({count}/{row['successes']})"


def _time_cell(row: dict) -> str:
    """ms per image; "n/a" when no image is timed (records of an older version); "ms (k/n)" when only k of
    the n images with records are."""
    count, left_out = row.get("n_timed", 0), row.get("n_untimed", 0)
    if not count:
        return "n/a"
    cell = f"{row['ms_per_image']:.1f}"
    return f"{cell} ({count}/{count + left_out})" if left_out else cell


def write_summary(summary: dict, out_dir: str, title: str = "") -> str:
    """summary.json, table.md and table.csv; returns the markdown table. The perceptibility columns (SSIM,
    PSNR, smoothness: means over the successes, as D̄) come after the older ones, which keep their order."""
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2))
    lines = [
        f"{title}".strip(),
        "",
        f"accuracy {summary['accuracy']:.4f} ({summary['correct']}/{summary['images']} images)",
        "",
        "| attack | P_suc | D̄ | successes / N | SSIM | PSNR (dB) | smoothness | ms/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["attacks"].values():
        lines.append(
            f"| {row['name']} | {row['p_suc']:.3f} | {row['mean_distortion']:.3f} | "
            f"{row['successes']}/{row['images']} | {_perceptibility_cell(row, 'ssim', '.3f')} | "
            f"{_perceptibility_cell(row, 'psnr', '.2f')} | {_perceptibility_cell(row, 'smoothness', '.3f')} | "
            f"{_time_cell(row)} |"
        )
    if any(row.get(f"n_{f}", 0) < row["successes"] for row in summary["attacks"].values() for f in PERCEPTIBILITY):
        lines += [
            "",
            "SSIM, PSNR, smoothness: n/a = no successful record carries the field (records of an older "
            "version); (k/n) = only k of the n successes carry it, and the mean is over those k.",
        ]
    if any(row.get("n_timed", 0) for row in summary["attacks"].values()):
        lines += [
            "",
            "ms/image: the attack's wall-clock time per image (all its ε runs; tracing and compiling included; "
            "an image the model already misclassifies costs a forward pass) on the machine and batch size of "
            "the run; n/a or (k/n): records of an older version carry no time, and the mean is over the k "
            "images all of whose runs are timed.",
        ]
    table = "\n".join(lines).strip() + "\n"
    atomic_write(os.path.join(out_dir, "table.md"), table)
    rows = [
        ["attack", "p_suc", "mean_distortion", "successes", "images", "accuracy"]
        + [f"mean_{f}" for f in PERCEPTIBILITY]
        + [f"n_{f}" for f in PERCEPTIBILITY]
        + ["ms_per_image", "n_timed", "n_untimed"]
    ]
    rows += [
        [
            r["name"],
            f"{r['p_suc']:.4f}",
            f"{r['mean_distortion']:.4f}",
            r["successes"],
            r["images"],
            f"{summary['accuracy']:.4f}",
        ]
        + [f"{r.get(f'mean_{f}', float('nan')):.4f}" for f in PERCEPTIBILITY]
        + [r.get(f"n_{f}", 0) for f in PERCEPTIBILITY]
        + [f"{r.get('ms_per_image', float('nan')):.1f}", r.get("n_timed", 0), r.get("n_untimed", 0)]
        for r in summary["attacks"].values()
    ]
    tmp = os.path.join(out_dir, "table.csv.tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    os.replace(tmp, os.path.join(out_dir, "table.csv"))
    return table


def plot_operating_characteristic(
    records: Sequence[dict], path: str, evaluated_on: str = "self", title: str = ""
) -> None:
    """One P(D) curve per attack, as the paper's Fig. 2/3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outcomes = per_image_outcomes(records, evaluated_on)
    d_max = max([v for per in outcomes.values() for v in per.values() if v is not None], default=1.0)
    grid = np.linspace(0, d_max * 1.02, 400)
    fig, ax = plt.subplots(figsize=(6, 4))
    for attack in presets.ATTACK_NAMES:
        if attack in outcomes:
            ax.plot(
                grid,
                operating_characteristic(list(outcomes[attack].values()), grid),
                label=presets.DISPLAY_NAMES[attack],
                linestyle="--" if attack.startswith("smooth") else "-",
            )
    ax.set_xlabel("distortion D (L2, [0,1] pixels)")
    ax.set_ylabel("P(D): probability of success")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def save_pngs(directory: str, attack: str, target, ids: Sequence[str], images: np.ndarray) -> None:
    """Write `images` as 8-bit PNGs ``<directory>/<attack>[-<target>]/<image_id>.png``."""
    from PIL import Image

    sub = os.path.join(directory, attack if target is None else f"{attack}-{target:g}")
    os.makedirs(sub, exist_ok=True)
    for image_id, img in zip(ids, images):
        arr = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(os.path.join(sub, f"{image_id}.png"))
