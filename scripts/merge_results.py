"""Merge the per-shard records of one experiment folder into its records.jsonl and recompute its tables and curves.

python scripts/merge_results.py --results_dir=results/white_box/fashion_mnist-c4/paper

The shard records are added to the records already in records.jsonl (an earlier run with other attacks, an
earlier merge, an unsharded resume), by record key: nothing in the folder is lost. A shard skips the keys
records.jsonl held when it started (it copies the clean records of its images, so its file names them), so the
check counts records.jsonl and the shards together. Refused (exit 2, nothing written): a missing or unfinished
shard, shards of different --num_shards, shards whose records are not one --attacks / --num_images run over
every shard, with what records.jsonl holds (shard_coverage_problem), records of another run than the
folder's run.json, and a key whose shard record differs from the recorded one (records.record_conflict; the
wall-clock `seconds` aside). records.jsonl is replaced atomically (fsynced, then renamed); only then are the
merged shard files removed, so the folder holds each record once and a later sharded run of any --num_shards
merges the same way.

Shard files that add nothing (every record already in records.jsonl: a shard retried after its merge) are a
no-op even when the other shards' files are gone: they are removed and records.jsonl is left as it is; a folder
with records.jsonl and no shard files only has its tables rewritten.
"""

import glob
import json
import os
import re

from absl import app, flags

from smoothadv_tf import report
from smoothadv_tf.cli import run_script
from smoothadv_tf.config import DISTORTION_TARGETING
from smoothadv_tf.records import (
    RecordsError,
    atomic_write,
    merge_records,
    read_records,
    read_run_identity,
    run_id,
    shard_coverage_problem,
    writer_lock,
)
from smoothadv_tf.tensorboard_log import recorded_location

FLAGS = flags.FLAGS
flags.DEFINE_string("results_dir", None, "an experiment folder holding records-shard*.jsonl", required=True)
flags.DEFINE_boolean(
    "tensorboard",
    True,
    "write the merged summary's TensorBoard events where the run's shards wrote theirs (the folder's "
    "tensorboard.json; <results_dir>/tb if it has none; nowhere if the run was made with --notensorboard)",
)


def main(_):
    try:
        tensorboard_dir = recorded_location(FLAGS.results_dir) if FLAGS.tensorboard else None
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    paths = sorted(glob.glob(os.path.join(FLAGS.results_dir, "records-shard*.jsonl")))
    target = os.path.join(FLAGS.results_dir, "records.jsonl")
    if not paths and not os.path.exists(target):
        raise app.UsageError(f"{FLAGS.results_dir}: no records-shard*.jsonl files")
    shards = [re.fullmatch(r"records-shard(\d+)-of-(\d+)\.jsonl", os.path.basename(p)) for p in paths]
    counts = {int(m.group(2)) for m in shards if m}
    if None in shards or len(counts) > 1:
        raise app.UsageError(f"{FLAGS.results_dir}: shard files of different --num_shards: {sorted(counts)}")
    missing = sorted(set(range(counts.pop() if counts else 0)) - {int(m.group(1)) for m in shards})
    locks = [writer_lock(target)]  # nobody appends to the file being replaced
    try:
        # refused while a shard is still being written; read without repairing, so a refusal writes nothing
        locks += [writer_lock(p) for p in paths]
        existing = read_records(target) if os.path.exists(target) else []
        shard_records = [(p, read_records(p)) for p in paths]
        targets = check_run(existing, shard_records)
        merged = merge_records(existing, shard_records)  # refuses conflicting duplicates
        if len(merged) > len(existing):  # shards that add records: all of them, one run
            if missing:
                raise app.UsageError(
                    f"{FLAGS.results_dir}: shards {missing} have not run (no records file); run them (a shard "
                    "merged before reruns as a no-op)"
                )
            problem = shard_coverage_problem([r for _, r in shard_records], targets, existing)
            if problem:
                raise RecordsError(f"{FLAGS.results_dir}: {problem}")
            atomic_write(target, "".join(json.dumps(r) + "\n" for r in merged))
        for path in paths:  # every record is in records.jsonl, on disk
            os.remove(path)
    finally:
        for held in locks:
            held.close()
    judges = sorted({r.get("evaluated_on", "self") for r in merged})
    for judge in judges:
        suffix = "" if judge == "self" else judge
        print(
            report.report(merged, FLAGS.results_dir, f"{FLAGS.results_dir} ({judge})", judge, suffix, tensorboard_dir)
        )
    added = len(merged) - len(existing)
    if not paths:
        print(f"no shard files: nothing to merge; {len(merged)} records in {target}")
    elif not added:
        print(f"{len(paths)} shard files add nothing to {target} ({len(merged)} records): removed, as merged before")
    else:
        print(
            f"merged {len(paths)} shards: {added} new records, {len(merged)} in all -> {target} (shard files removed)"
        )


def check_run(existing: list[dict], shard_records: list[tuple[str, list[dict]]]) -> dict | None:
    """With a run.json in the folder: refuse records of another run (their run_id), and return each attack's
    targets there ({attack: [target, ...]}) for the coverage check; None without a run.json."""
    path = os.path.join(FLAGS.results_dir, "run.json")
    if not os.path.exists(path):
        return None
    identity = read_run_identity(path)
    rid = run_id(identity)
    for source, records in [(os.path.join(FLAGS.results_dir, "records.jsonl"), existing), *shard_records]:
        other = next((r["run_id"] for r in records if r.get("run_id") not in (None, rid)), None)
        if other is not None:
            raise RecordsError(f"{source}: records of run {other}, but {path} is run {rid}: another run")
    return {
        attack: [p.get("epsilon") if attack in DISTORTION_TARGETING else None for p in runs]
        for attack, runs in identity["attacks"].items()
    }


if __name__ == "__main__":
    run_script(main)
