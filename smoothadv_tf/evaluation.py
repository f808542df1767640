"""The evaluation protocol of paper §5.1 and the resumable, shardable experiment runner.

- Only images the model classifies correctly count: N of N' (accuracy N/N').
- P_suc = N_suc / N; D̄ is the mean distortion over successes only (eq. 20); the operating characteristic
  P(D) = |{x in X_suc : D(x) <= D}| / N (eq. 21).
- Distortion-targeting attacks (FGSM, I-FGSM, PGD₂, sPGD₂) run once per target ε; an image succeeds if any run
  succeeds, with D the minimum over successful runs. Optimality attacks (C&W, sC&W) run once.
- Success and D are measured on the 8-bit-quantised adversarial image (see attacks); so are the
  perceptibility fields of each attack record: smoothness (smoothing.smoothness), ssim and psnr
  (perceptibility; psnr null = +inf, the image is the original). When the attacks quantise (the default) they
  round x to 8 bits on entry; the clean record judges, and D and the perceptibility fields measure against,
  that rounded image (AttackResult.original), so an off-grid image's rounding noise counts nowhere. The summary reports their means over the
  same least-distortion successful records as D̄ (:data:`PERCEPTIBILITY`).
- Each attack record carries `seconds`: the wall-clock time of the attack call on its batch divided by the
  images attacked in it (the first batch of a process includes tracing and compiling the loop). The summary's
  ms_per_image is the whole attack's time per attacked image: all its ε runs, every attacked image (correct
  or not), over the images whose records carry it.

Per-image records are JSON lines appended and fsynced after each batch, so a killed run loses at most the
batch in flight and a rerun skips what is recorded; the records file is locked against a second writer and
repaired after a kill (RecordStore). Shards split images by index modulo the shard count; a shard's store
reads the folder's records.jsonl (RecordStore done_in) and skips what it holds, copying only the clean records
of its images, so scripts/merge_results.py adds each key once (shard_coverage_problem checks both together).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from smoothadv_tf import presets
from smoothadv_tf.cli import InputError

DISTORTION_TARGETING = ("fgsm", "ifgsm", "pgd2", "smooth_pgd2", "smooth_pgd2_latent")
# Target lists per preset (ε of each run). MNIST PGD₂ uses D in [1, 6] as the paper's Fig. 2.
TARGETS = {
    "mnist": {
        "fgsm": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
        "ifgsm": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
        "pgd2": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "smooth_pgd2": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "smooth_pgd2_latent": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    },
    "imagenet": {
        "fgsm": [0.02, 0.04, 0.06, 0.08, 0.1, 0.1255],
        "ifgsm": [0.02, 0.04, 0.06, 0.08, 0.1, 0.1255],
        "pgd2": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "smooth_pgd2": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "smooth_pgd2_latent": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    },
}


def shard_indices(num_images: int, num_shards: int = 1, shard_index: int = 0) -> np.ndarray:
    """The deterministic slice of image indices owned by one shard (index modulo num_shards)."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"--num_shards={num_shards}, --shard_index={shard_index}: need 0 <= index < shards")
    return np.arange(num_images)[np.arange(num_images) % num_shards == shard_index]


def shard_coverage_problem(
    shards: Sequence[Sequence[dict]], targets: dict | None = None, existing: Sequence[dict] = ()
) -> str | None:
    """Why the records of shards 0..N-1, with the folder's `existing` records (records.jsonl), are not what
    running every shard with one --attacks and one --num_images leaves (None if they are).

    A shard writes, batch by batch, the clean record of each of its images first (computed, or copied from
    records.jsonl when it is there: RecordStore(done_in=...)), then its attack records; a key records.jsonl holds
    already is not recomputed. So per judge: shard i's clean images must be len(range(i, M, N)) images for one
    M (shard_indices), and each of them must have every (attack, target) the shards ran, in the shard's file or
    in `existing`. A shard that ran other attacks or another --num_images, or stopped early (between an image's
    clean record and its attacks, or before its last ε runs), breaks that. The targets of an attack are those
    of `targets` ({attack: [target, ...]}, the run's run.json) where given, else every target a shard holds."""
    n = len(shards)
    done = {record_key(r) for r in existing}
    held = [{record_key(r) for r in records} for records in shards]
    for judge in sorted({r.get("evaluated_on", "self") for records in shards for r in records}):
        on = "" if judge == "self" else f" judged on {judge}"
        mine = [[r for r in records if r.get("evaluated_on", "self") == judge] for records in shards]
        clean = [{r["image_id"] for r in records if r["attack"] == "clean"} for records in mine]
        counts = [len(ids) for ids in clean]
        expected = [len(range(i, sum(counts), n)) for i in range(n)]
        if counts != expected:
            return (
                f"the shards hold clean{on} records of {counts} images, not one --num_images split over {n} "
                f"shards ({expected} for {sum(counts)}): a shard ran with another --num_images, or stopped early; "
                "rerun it with the flags of the others"
            )
        found = defaultdict(set)
        for records in mine:
            for r in records:
                if r["attack"] != "clean":
                    found[r["attack"]].add(r.get("target"))
        runs = sorted(
            ((attack, t) for attack, ts in found.items() for t in set((targets or {}).get(attack, ())) or ts),
            key=str,
        )
        for i, records in enumerate(mine):
            orphans = sorted({r["image_id"] for r in records if r["attack"] != "clean"} - clean[i])
            if orphans:
                return (
                    f"shard {i} has attack{on} records of {len(orphans)} image(s) it has no clean record of "
                    f"(e.g. {orphans[0]}): not a file a shard writes; remove it and rerun that shard"
                )
            for attack, target in runs:
                missing = sorted(
                    image
                    for image in clean[i]
                    if (judge, image, attack, target) not in held[i] and (judge, image, attack, target) not in done
                )
                if missing:
                    what = attack + ("" if target is None else f" (target {target})") + on
                    return (
                        f"shard {i} has no {what} record of {len(missing)} of its {len(clean[i])} images "
                        f"(e.g. {missing[0]}), in its file or in records.jsonl: it stopped early or ran other "
                        "--attacks; rerun it with the flags of the others"
                    )
    return None


def attack_runs(
    attack: str,
    preset: str,
    single_run: bool = False,
    overrides: dict | None = None,
    protocol: str = presets.DEFAULT_PROTOCOL,
) -> list[dict]:
    """The parameter sets one attack runs with under `protocol`: one per target ε, or the preset alone.
    `overrides` (e.g. ``{"iterations": 20}``) apply to every attack that takes the parameter
    (presets.overrides_for); an ε this attack takes disables the sweep."""
    taken = presets.overrides_for(attack, overrides or {})  # under the attack's own names (epsilon_linf -> epsilon)
    params = presets.preset(preset, attack, protocol, **taken)
    if attack not in DISTORTION_TARGETING or single_run or "epsilon" in taken:
        return [params]
    return [{**params, "epsilon": eps} for eps in TARGETS[preset][attack]]


# ------------------------------------------------------------------------------------------------ records
class RecordsError(InputError):
    """A records file that cannot be used: a corrupt line, or another process writing it."""


class RecordStore:
    """Append-only JSON-lines file of per-image records, keyed by (evaluated_on, image_id, attack, target).

    A record exists once its line, newline included, is on disk. Opening the store for writing (the default)
    takes an advisory lock (``fcntl.flock`` on ``<path>.lock``, which names the holder's process id and host)
    so a second writer is refused with :class:`RecordsError`; the kernel drops the lock when the holder dies,
    so a killed run never leaves a stale one. It then repairs the file: an unterminated last line (a run
    killed mid-write) is cut off with a warning saying how many bytes were dropped, so the next append starts
    on a fresh line. ``writer=False`` reads without lock or repair.

    ``done_in`` (a shard's store: the folder's records.jsonl) is read once, read-only, without lock or repair:
    its keys count as recorded (:meth:`has`: a run skips them rather than recompute them in another batch
    composition, where TF's kernels may round differently) and :meth:`append` never writes them to this file;
    :meth:`copy_done` copies such records verbatim (a shard copies the clean records of its images, so its file
    names every image it covers: shard_coverage_problem).
    """

    def __init__(self, path: str, writer: bool = True, lock=None, done_in: str | None = None):
        self.path = path
        # `lock`: one taken before with writer_lock(path) (a caller that must check more before writing)
        self._lock = (lock or writer_lock(path)) if writer else None
        try:
            self.records: list[dict] = read_records(path, warn=not writer) if os.path.exists(path) else []
            if writer:  # after the read: a file damaged elsewhere is refused untouched
                repair_records(path)
            done = read_records(done_in, warn=False) if done_in and os.path.exists(done_in) else []
        except BaseException:
            self.close()
            raise
        self.keys = {record_key(r) for r in self.records}
        self.done: dict = {record_key(r): r for r in done}  # records of `done_in`, by key

    def has(self, key) -> bool:
        return key in self.keys or key in self.done

    def append(self, records: Sequence[dict]) -> None:
        """Append and fsync; records whose key is already stored (here or in ``done_in``) are not written."""
        fresh, seen = [], set()
        for r in records:
            key = record_key(r)
            if not self.has(key) and key not in seen:
                fresh.append(r)
                seen.add(key)
        self._write(fresh)

    def copy_done(self, keys) -> None:
        """Append and fsync, verbatim, the ``done_in`` records of those `keys` this file lacks."""
        fresh = {key: self.done[key] for key in keys if key in self.done and key not in self.keys}
        self._write(list(fresh.values()))

    def _write(self, fresh: list[dict]) -> None:
        if self._lock is None:
            raise RecordsError(f"{self.path}: store opened read-only")
        if not fresh:
            return
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in fresh))
            f.flush()
            os.fsync(f.fileno())
        self.records.extend(fresh)
        self.keys.update(record_key(r) for r in fresh)

    def close(self) -> None:
        """Release the writer lock (also released when the process ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def writer_lock(path: str):
    """Take the writer lock of records file `path` (an open file; closing it releases the lock), or raise
    RecordsError naming the process that holds it."""
    import fcntl
    import socket

    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        lock = open(path + ".lock", "a+")
    except OSError as e:
        raise RecordsError(f"{path}: cannot write here ({e.strerror})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RecordsError(f"{path} is being written by {holder}; wait for it or use another --output_dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"process {os.getpid()} on host {socket.gethostname()}\n")
    lock.flush()
    return lock


def repair_records(path: str) -> int:
    """Cut an unterminated last line off a records file (a run killed mid-write); return the bytes dropped."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return 0
        keep, block = 0, 1 << 16
        for end in range(size, 0, -block):  # scan back for the last newline
            start = max(0, end - block)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    logging.warning("%s: dropped %d bytes of an unterminated last record (a run killed mid-write)", path, size - keep)
    return size - keep


def record_key(r: dict):
    return (r.get("evaluated_on", "self"), r["image_id"], r["attack"], r.get("target"))


WALL_CLOCK_FIELDS = ("seconds",)  # two runs of one computation never share these
# Relative tolerance on float fields of two records of one key, for the records that can still meet (a shard
# skips what records.jsonl holds when it starts; a key recorded there while it ran is computed twice): TF's
# kernels may round differently for another batch composition, by far less than this.
FLOAT_TOLERANCE = 1e-4


def record_conflict(a: dict, b: dict) -> str | None:
    """Why two records of one key are not the same outcome (None if they are): the fields both carry must be
    equal, floats within FLOAT_TOLERANCE relative (two NaNs are equal), wall-clock fields aside. A field only
    one carries (a record of an older version) is not a difference."""
    for field in sorted((set(a) & set(b)) - set(WALL_CLOCK_FIELDS)):
        x, y = a[field], b[field]
        if isinstance(x, float) and isinstance(y, float):
            same = math.isclose(x, y, rel_tol=FLOAT_TOLERANCE, abs_tol=1e-6) or (math.isnan(x) and math.isnan(y))
        else:
            same = x == y and type(x) is type(y)
        if not same:
            return f"{field} {x!r} vs {y!r}"
    return None


def merge_records(existing: Sequence[dict], shards: Sequence[tuple[str, Sequence[dict]]]) -> list[dict]:
    """`existing` (records.jsonl) followed by the records of `shards` ((path, records) pairs) it lacks, by
    record_key. Raises RecordsError for a key in two shards (shards own disjoint images) or a key whose shard
    record differs from the existing one (record_conflict); an equal duplicate keeps the existing record."""
    merged = list(existing)
    index = {record_key(r): r for r in existing}
    owner: dict = {}
    for path, records in shards:
        for r in records:
            key = record_key(r)
            if key in owner:
                where = "twice" if owner[key] == path else f"also in {owner[key]} (shards of different --num_shards?)"
                raise RecordsError(f"{path}: record {key} appears {where}")
            owner[key] = path
            if key in index:
                conflict = record_conflict(index[key], r)
                if conflict:
                    raise RecordsError(
                        f"{path}: record {key} differs from the one in records.jsonl ({conflict}); "
                        "remove the one that should not count"
                    )
                continue
            index[key] = r
            merged.append(r)
    return merged


def read_records(path: str, warn: bool = True) -> list[dict]:
    """Read a records file. Only newline-terminated lines are records: an unterminated last line (a run killed
    mid-write) is ignored with a warning; any other line that is not a JSON record raises RecordsError."""
    records = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines[-1] and warn:
        logging.warning(
            "%s: ignoring an unterminated last line (%d bytes; a run killed mid-write)", path, len(lines[-1])
        )
    for i, line in enumerate(lines[:-1]):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RecordsError(
                f"{path}: line {i + 1} is not a JSON record ({e}); the file is damaged: remove that line or the folder"
            ) from e
        if not isinstance(record, dict) or not {"image_id", "attack"} <= set(record):
            raise RecordsError(f"{path}: line {i + 1} is not a record (needs image_id and attack)")
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------- statistics
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


# ------------------------------------------------------------------------------------------------- outputs
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


def atomic_write(path: str, text: str) -> None:
    """Write through a temporary and a rename: readers (and a killed writer) see the old file or the new one."""
    tmp = f"{path}.{os.getpid()}.tmp"  # per process: shards writing the same file never share a temporary
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename: a crash never leaves the new name with no content
    os.replace(tmp, path)
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself
    finally:
        os.close(folder)


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


# -------------------------------------------------------------------------------------------------- runner
def run_experiment(
    model,
    dataset,
    attack_names: Sequence[str],
    preset: str,
    store: RecordStore,
    indices: np.ndarray,
    batch_size: int = 100,
    single_run: bool = False,
    evaluate_on: dict[str, Callable] | None = None,
    save_images_dir: str | None = None,
    progress: bool = True,
    overrides: dict | None = None,
    protocol: str = presets.DEFAULT_PROTOCOL,
    run_id: str | None = None,
    strategy=None,
) -> None:
    """Attack `model` on dataset[indices] under `protocol` and append per-image records to `store`.

    `evaluate_on` maps names to other models on which the adversarial images are judged instead (transfer,
    §5.4); by default they are judged on `model` itself ("self"). Images with label -1 take the model's
    own prediction as their label. Every record carries the protocol and `run_id` (see
    :func:`smoothadv_tf.experiment.run_identity`), so records of different runs can always be told apart.
    With a ``tf.distribute`` `strategy` (build the models in its scope), every attack batch is split across
    its replicas; the records are the same as on one device.
    """
    import contextlib

    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        _run_experiment(
            model,
            dataset,
            attack_names,
            preset,
            store,
            indices,
            batch_size,
            single_run,
            evaluate_on,
            save_images_dir,
            progress,
            overrides,
            protocol,
            run_id,
        )


def _run_experiment(
    model,
    dataset,
    attack_names,
    preset,
    store,
    indices,
    batch_size,
    single_run,
    evaluate_on,
    save_images_dir,
    progress,
    overrides,
    protocol,
    run_id,
) -> None:
    from tqdm import tqdm

    from smoothadv_tf.data import DataError

    # records are keyed by image id: a second image of one id would be dropped (and its PNG overwritten)
    if len(set(dataset.ids)) != len(dataset.ids):
        twice = sorted(i for i, n in Counter(dataset.ids).items() if n > 1)
        raise DataError(f"image ids {twice[:5]} name several images each: records need one id per image")

    import tensorflow as tf

    from smoothadv_tf import attacks as attacks_lib  # TensorFlow: imported when attacks run, not to read records
    from smoothadv_tf import perceptibility
    from smoothadv_tf.smoothing import smoothness

    judges = evaluate_on or {"self": model}
    runs = [(a, p) for a in attack_names for p in attack_runs(a, preset, single_run, overrides, protocol)]
    # Attacks that quantise (the default) round x to 8 bits on entry and judge "originally correct" there
    # (AttackResult.original); the clean records judge the same image, so the two agree.
    rounding = {bool(p.get("quantize", True)) for _, p in runs} or {True}
    if len(rounding) > 1:
        raise ValueError("attack runs with and without quantize: their clean images would differ; run them apart")
    rounds = rounding.pop()
    tags = {"protocol": protocol, "run_id": run_id}
    bar = tqdm(total=len(indices) * len(runs), desc="attack runs x images", unit="img", disable=not progress)
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        ids = [dataset.ids[i] for i in idx]
        x = dataset.images[idx]
        if rounds:  # the clean image the attacks start from (attacks.common._prepare: float32, rounded)
            x = attacks_lib.quantize(tf.constant(np.asarray(x, np.float32))).numpy()
        source_pred = np.argmax(attacks_lib.logits_of(model, x).numpy(), -1)
        y = np.where(dataset.labels[idx] >= 0, dataset.labels[idx], source_pred)
        clean, copied = [], []
        for judge_name, judge in judges.items():
            pred = source_pred if judge is model else np.argmax(attacks_lib.logits_of(judge, x).numpy(), -1)
            for k, image_id in enumerate(ids):
                if store.has((judge_name, image_id, "clean", None)):
                    # a shard copies the clean records its folder's records.jsonl holds (RecordStore.done_in)
                    copied.append((judge_name, image_id, "clean", None))
                else:
                    # In transfer, an image counts only if both the source and the judged model get it right.
                    correct = bool(pred[k] == y[k] and source_pred[k] == y[k])
                    clean.append(
                        {
                            "evaluated_on": judge_name,
                            "image_id": image_id,
                            "attack": "clean",
                            "target": None,
                            "label": int(y[k]),
                            "prediction": int(pred[k]),
                            "correct": correct,
                            **tags,
                        }
                    )
        store.copy_done(copied)
        store.append(clean)  # the clean records of a batch first: shard_coverage_problem relies on it
        if save_images_dir:
            _save_pngs(save_images_dir, "original", None, ids, x)
        for attack, params in runs:
            target = params.get("epsilon") if attack in DISTORTION_TARGETING else None
            todo = [k for k, i in enumerate(ids) if any(not store.has((j, i, attack, target)) for j in judges)]
            bar.update(len(ids) - len(todo))
            if not todo:
                continue
            started = time.perf_counter()
            result = attacks_lib.run_attack(attack, model, x[todo], y[todo], **params)  # numpy: finished
            seconds = (time.perf_counter() - started) / len(todo)
            # perceptibility of the judged (quantised) image against the image the attack started from and
            # measured D from (x rounded to 8 bits when quantising), as D
            original = result.original
            smooth = smoothness(result.adversarial - original, original).numpy()
            ssim = perceptibility.ssim(original, result.adversarial)
            psnr = perceptibility.psnr(original, result.adversarial)
            new = []
            for judge_name, judge in judges.items():
                if judge is model:
                    success, pred = result.success, result.prediction
                else:
                    pred = np.argmax(attacks_lib.logits_of(judge, result.adversarial).numpy(), -1)
                    success = pred != y[todo]
                for j, k in enumerate(todo):
                    new.append(
                        {
                            "evaluated_on": judge_name,
                            "image_id": ids[k],
                            "attack": attack,
                            "target": target,
                            "success": bool(success[j]),
                            "distortion": float(result.distortion[j]),
                            "label": int(y[k]),
                            "prediction": int(pred[j]),
                            "smoothness": float(smooth[j]),
                            "ssim": float(ssim[j]),
                            "psnr": perceptibility.psnr_for_json(psnr[j]),
                            "iterations": int(result.iterations[j]),
                            "seconds": seconds,
                            **tags,
                        }
                    )
            if save_images_dir:
                _save_pngs(save_images_dir, attack, target, [ids[k] for k in todo], result.adversarial)
            store.append(new)
            bar.update(len(todo))
    bar.close()


def _save_pngs(directory: str, attack: str, target, ids: Sequence[str], images: np.ndarray) -> None:
    from PIL import Image

    sub = os.path.join(directory, attack if target is None else f"{attack}-{target:g}")
    os.makedirs(sub, exist_ok=True)
    for image_id, img in zip(ids, images):
        arr = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(os.path.join(sub, f"{image_id}.png"))
