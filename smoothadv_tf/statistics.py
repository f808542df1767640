"""The statistics of the evaluation protocol (paper §5.1), computed from records alone.

- Only images the model classifies correctly count: N of N' (accuracy N/N').
- P_suc = N_suc / N; D̄ is the mean distortion over successes only (eq. 20); the operating characteristic
  P(D) = |{x in X_suc : D(x) <= D}| / N (eq. 21).
- Distortion-targeting attacks (FGSM, I-FGSM, PGD₂, sPGD₂) run once per target ε; an image succeeds if any run
  succeeds, with D the minimum over successful runs (:func:`best_records`). Optimality attacks (C&W, sC&W) run
  once.
- The perceptibility fields of the attack records (smoothness, ssim, psnr; :data:`PERCEPTIBILITY`) are
  averaged over the same least-distortion successful records as D̄; ``seconds`` gives the time per image
  (:func:`time_per_image`).

A new statistic goes here (and its column in :mod:`smoothadv_tf.report`); nothing here writes files.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from smoothadv_tf import presets


def best_records(records: Sequence[dict], evaluated_on: str = "self") -> dict:
    """{attack: {image_id: its least-distortion successful record, or None}} over the images the model
    classified correctly (§5.1: a swept attack succeeds if any run does, with the minimum D)."""
    correct = {
        r["image_id"]
        for r in records
        if r["attack"] == "clean" and r.get("evaluated_on", "self") == evaluated_on and r["correct"]
    }
    out: dict = defaultdict(dict)
    for r in records:
        if r["attack"] == "clean" or r.get("evaluated_on", "self") != evaluated_on or r["image_id"] not in correct:
            continue
        best = out[r["attack"]].get(r["image_id"])
        if r["success"] and (best is None or r["distortion"] < best["distortion"]):
            best = r
        out[r["attack"]][r["image_id"]] = best
    return out


def per_image_outcomes(records: Sequence[dict], evaluated_on: str = "self") -> dict:
    """{attack: {image_id: minimum successful D or None}} over the images the model classified correctly."""
    return {
        attack: {i: (r["distortion"] if r is not None else None) for i, r in per.items()}
        for attack, per in best_records(records, evaluated_on).items()
    }


# Perceptibility fields of attack records, summarised over the successes as D̄ is: mean_<field> and n_<field>.
PERCEPTIBILITY = ("ssim", "psnr", "smoothness")


def _mean_over_present(best: Sequence[dict], field: str) -> tuple[float, int]:
    """Mean of `field` over the records carrying it, and their number. Records written before the field
    existed lack it: they are left out, never taken as 0 (NaN when none has it). A null psnr is +inf."""
    values = [np.inf if r[field] is None else r[field] for r in best if field in r]
    return (float(np.mean(values)) if values else float("nan")), len(values)


def time_per_image(records: Sequence[dict], evaluated_on: str = "self") -> dict:
    """{attack: (ms per image, images timed, images left out)}: the `seconds` of all of an attack's records
    (every ε run) summed per image, averaged over the images whose records all carry it. Every image of the
    attack's batches counts (one the model already misclassifies costs a forward pass); an image with some
    untimed runs (an older version's run resumed by this one) is left out rather than counted as faster.
    NaN when no image is fully timed."""
    per_image: dict = defaultdict(lambda: defaultdict(float))
    untimed: dict = defaultdict(set)
    for r in records:
        if r["attack"] == "clean" or r.get("evaluated_on", "self") != evaluated_on:
            continue
        if "seconds" in r:
            per_image[r["attack"]][r["image_id"]] += r["seconds"]
        else:
            untimed[r["attack"]].add(r["image_id"])
    timing = {}
    for attack in set(per_image) | set(untimed):
        seconds = [s for image, s in per_image[attack].items() if image not in untimed[attack]]
        ms = 1000 * float(np.mean(seconds)) if seconds else float("nan")
        timing[attack] = (ms, len(seconds), len(untimed[attack]))
    return timing


def summarize(records: Sequence[dict], evaluated_on: str = "self") -> dict:
    """Accuracy N/N' and, per attack, P_suc and conditional mean distortion D̄ (eq. 20), and the mean SSIM,
    PSNR (dB, the mean of per-image PSNRs) and smoothness over the same successful records:
    mean_ssim / mean_psnr / mean_smoothness, each with n_ssim / n_psnr / n_smoothness, the number of those
    records that carry the field (fewer than `successes` when some were recorded by an older version; then
    the mean is over those only, and NaN when none carries it); ms_per_image, n_timed and n_untimed from
    :func:`time_per_image`."""
    clean = [r for r in records if r["attack"] == "clean" and r.get("evaluated_on", "self") == evaluated_on]
    n_total, n_correct = len(clean), sum(bool(r["correct"]) for r in clean)
    rows = {}
    timing = time_per_image(records, evaluated_on)
    for attack, per_image in best_records(records, evaluated_on).items():
        best = [r for r in per_image.values() if r is not None]
        d = np.array([r["distortion"] for r in best], np.float64)
        n = len(per_image)
        means = {field: _mean_over_present(best, field) for field in PERCEPTIBILITY}
        rows[attack] = {
            "attack": attack,
            "name": presets.DISPLAY_NAMES.get(attack, attack),
            "images": n,
            "successes": int(len(d)),
            "p_suc": len(d) / n if n else float("nan"),
            "mean_distortion": float(d.mean()) if len(d) else float("nan"),
            **{f"mean_{field}": mean for field, (mean, _) in means.items()},
            **{f"n_{field}": count for field, (_, count) in means.items()},
            **dict(zip(("ms_per_image", "n_timed", "n_untimed"), timing.get(attack, (float("nan"), 0, 0)))),
        }
    ordered = {a: rows[a] for a in presets.ATTACK_NAMES if a in rows}
    return {
        "images": n_total,
        "correct": n_correct,
        "accuracy": n_correct / n_total if n_total else float("nan"),
        "evaluated_on": evaluated_on,
        "attacks": ordered,
    }


def operating_characteristic(distortions: Sequence[float | None], grid: np.ndarray) -> np.ndarray:
    """P(D) of eq. (21) on a grid: the fraction of all N images that succeed with distortion <= D."""
    n = len(distortions)
    d = np.array([v for v in distortions if v is not None], np.float64)
    return np.array([(d <= g).sum() / n if n else np.nan for g in grid])
