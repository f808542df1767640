"""The records of a run: the per-image records file, the run's identity, and what a merge checks.

- :class:`RecordStore`: the JSON-lines file of per-image records, appended and fsynced after each batch (a
  killed run loses at most the batch in flight and a rerun skips what is recorded), locked against a second
  writer (:func:`writer_lock`) and repaired after a kill (:func:`repair_records`). Records are keyed by
  (evaluated_on, image_id, attack, target) (:func:`record_key`).
- The run identity (:func:`run_identity`, kept in the run folder's ``run.json``, :func:`claim_run`):
  everything that decides a run's results — dataset content, model name and weights (a hash of the loaded
  values), seed, preset, protocol and every attack's parameters after overrides (not the number of images:
  asking for more extends a run). Any difference with the ``run.json`` already in a folder is refused with a
  message saying what differs, so a resume never mixes two runs; every record carries the protocol and the
  run id (:func:`run_id`).
- Shards split images by index modulo the shard count (:func:`shard_indices`); a shard's store reads the
  folder's records.jsonl (``RecordStore(done_in=...)``) and skips what it holds, copying only the clean
  records of its images, so ``scripts/merge_results.py`` adds each key once (:func:`merge_records`;
  :func:`shard_coverage_problem` checks the shards together).

A new record field goes where the records are written (:mod:`smoothadv_tf.runner`) and, if it is a float a
rerun may round differently, nowhere else: :func:`record_conflict` compares floats within FLOAT_TOLERANCE.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from absl import logging

from smoothadv_tf.config import RunConfig, canonical_model
from smoothadv_tf.errors import ConfigError, InputError


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
        """Whether a record of `key` (:func:`record_key`) is stored, or done in the merged file a shard skips."""
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
    """A record's identity: (evaluated_on, image_id, attack, target); a store holds one record per key."""
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


# ------------------------------------------------------------------------------------------- run identity
def model_fingerprint(model) -> str:
    """Content hash of the model's weights as loaded: what was attacked, whatever file it came from (two shards
    that each trained their own C4 get different hashes even if they wrote the same cache file)."""
    weights = getattr(model, "weights", None)
    if not weights:
        return "unknown"
    h = hashlib.sha256()
    for w in weights:
        value = np.asarray(w)
        h.update(str(value.shape).encode())
        h.update(value.tobytes())
    return h.hexdigest()[:16]


def dataset_fingerprint(dataset) -> str:
    """Content hash of the images, labels and ids a run draws from."""
    h = hashlib.sha256()
    h.update(dataset.images.tobytes())
    h.update(dataset.labels.tobytes())
    h.update("\n".join(dataset.ids).encode())
    return h.hexdigest()[:16]


def run_identity(
    config: RunConfig, experiment: str, dataset, model, *, single_run=False, defaults=None, judges=None
) -> dict:
    """Everything that decides the results of this run (the configuration, the data, the attacked model's
    weights), with every attack's parameter sets (`defaults`: the experiment's own overrides, under
    ``config.attack_params``; `judges`: the judged models' weights, transfer). How a C4 trained here was trained
    (``training``) is there only for c4_adv, so that the run ids of every other run stay what they were."""
    identity = {
        "experiment": experiment,
        "dataset": config.dataset,
        "data": dataset_fingerprint(dataset),
        "model": canonical_model(config.model),
        "weights": model_fingerprint(model),
        "seed": config.seed,
        "preset": config.preset_name,
        "protocol": config.protocol,
        "single_run": bool(single_run),
        "judges": dict(judges or {}),
        "attacks": {a: config.attack_runs(a, single_run, defaults) for a in config.attacks},
    }
    if config.training is not None:
        identity["training"] = config.training
    return identity


def run_id(identity: dict) -> str:
    """Short id of a run's common identity (the attacks' parameters are checked one attack at a time)."""
    common = {k: v for k, v in identity.items() if k != "attacks"}
    return hashlib.sha256(json.dumps(common, sort_keys=True).encode()).hexdigest()[:12]


def identity_differences(recorded: dict, now: dict) -> list[str]:
    """What differs between a recorded run identity and this one; attacks only one of them has are fine."""
    diffs = [
        f"{key}: recorded {recorded.get(key)!r}, now {now.get(key)!r}"
        for key in sorted(set(recorded) | set(now))
        if key != "attacks" and recorded.get(key) != now.get(key)
    ]
    for attack, runs in now.get("attacks", {}).items():
        before = recorded.get("attacks", {}).get(attack)
        if before is not None and before != runs:
            changed = sorted(
                {k for old, new in zip(before, runs) for k in set(old) | set(new) if old.get(k) != new.get(k)}
            ) or ["number of target runs"]
            diffs.append(f"{attack} parameters {changed}")
    return diffs


def read_run_identity(path: str) -> dict:
    """A run.json, or RecordsError saying it is damaged."""
    try:
        with open(path) as f:
            identity = json.load(f)
    except (OSError, ValueError) as e:
        raise RecordsError(f"{path}: not a readable run identity ({e})") from None
    needed = {"experiment", "dataset", "model", "protocol", "attacks", "weights", "data"}
    if not isinstance(identity, dict) or not needed <= set(identity):
        missing = sorted(needed - set(identity)) if isinstance(identity, dict) else "all"
        raise RecordsError(f"{path}: not a run identity of this version (missing {missing})")
    return identity


def claim_run(out_dir: str, identity: dict) -> str:
    """Record the identity in out_dir/run.json, or check it against the one there; return the run id.
    A different run in the same folder is refused (ConfigError) with what differs."""
    import fcntl

    path = os.path.join(out_dir, "run.json")
    os.makedirs(out_dir, exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # shards starting together: check and merge one at a time
        if os.path.exists(path):
            recorded = read_run_identity(path)
            diffs = identity_differences(recorded, identity)
            if diffs:
                raise ConfigError(
                    f"{out_dir} holds another run ({'; '.join(diffs)}): pass another --output_dir to keep both, "
                    "or remove that folder"
                )
            identity = {**identity, "attacks": {**recorded.get("attacks", {}), **identity["attacks"]}}
        atomic_write(path, json.dumps(identity, indent=2, sort_keys=True))
    return run_id(identity)


def recorded_params(out_dir: str, attack: str, target) -> dict:
    """The parameters a recorded run used for `attack` (at distortion target `target`), from its run.json."""
    path = os.path.join(out_dir, "run.json")
    if not os.path.exists(path):
        raise ConfigError(f"{path} not found: run the experiment with the same flags first")
    runs = read_run_identity(path)["attacks"].get(attack)
    for params in runs or []:
        if target is None or params.get("epsilon") == target:
            return params
    raise ConfigError(f"{path}: no recorded parameters for {attack} at target {target}")
