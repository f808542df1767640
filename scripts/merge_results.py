"""Merge the per-shard records of one experiment folder and recompute its tables and curves.

python scripts/merge_results.py --results_dir=results/white_box/fashion_mnist-c4/paper
"""

import glob
import json
import os
import re

from absl import app, flags

from smoothadv_tf import evaluation, experiment

FLAGS = flags.FLAGS
flags.DEFINE_string("results_dir", None, "an experiment folder holding records-shard*.jsonl", required=True)


def main(_):
    paths = sorted(glob.glob(os.path.join(FLAGS.results_dir, "records-shard*.jsonl")))
    if not paths:
        raise app.UsageError(f"{FLAGS.results_dir}: no records-shard*.jsonl files")
    shards = [re.fullmatch(r"records-shard(\d+)-of-(\d+)\.jsonl", os.path.basename(p)) for p in paths]
    counts = {int(m.group(2)) for m in shards if m}
    if None in shards or len(counts) != 1:
        raise app.UsageError(f"{FLAGS.results_dir}: shard files of different --num_shards: {sorted(counts)}")
    missing = sorted(set(range(counts.pop())) - {int(m.group(1)) for m in shards})
    if missing:
        raise app.UsageError(f"{FLAGS.results_dir}: shards {missing} have not run (no records file)")
    merged, seen, stores = [], set(), []
    target = os.path.join(FLAGS.results_dir, "records.jsonl")
    locks = [evaluation.writer_lock(target)]  # nobody appends to the file being replaced
    try:
        for path in paths:
            stores.append(evaluation.RecordStore(path))  # refused while a shard is still being written
            for r in stores[-1].records:
                key = evaluation.record_key(r)
                if key in seen:
                    raise app.UsageError(
                        f"{path}: record {key} also appears in another shard (shard files of different --num_shards?)"
                    )
                seen.add(key)
                merged.append(r)
        evaluation.atomic_write(target, "".join(json.dumps(r) + "\n" for r in merged))
    finally:
        for held in [*stores, *locks]:
            held.close()
    judges = sorted({r.get("evaluated_on", "self") for r in merged})
    for judge in judges:
        suffix = "" if judge == "self" else judge
        print(experiment.report(merged, FLAGS.results_dir, f"{FLAGS.results_dir} ({judge})", judge, suffix))
    print(f"merged {len(paths)} shards, {len(merged)} records -> {FLAGS.results_dir}")


if __name__ == "__main__":
    experiment.run_script(main)
