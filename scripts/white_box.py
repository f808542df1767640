"""Table 1 / Figures 2-3: white-box attacks on one model (paper §5.3).

    python scripts/white_box.py --dataset=fashion_mnist --model=c4 --num_images=1000
    python scripts/white_box.py --dataset=nips17 --data_dir=DIR --model=inception_v3 \
        --checkpoint=models/inception_v3.ckpt

Rerunning the same command resumes; --num_shards/--shard_index split the images (merge with
scripts/merge_results.py).
"""

from absl import app, flags

from smoothadv_tf import evaluation, experiment

FLAGS = flags.FLAGS
experiment.define_common_flags()
flags.DEFINE_boolean("save_images", False, "also write the adversarial images as 8-bit PNGs")


def main(_):
    attacks = experiment.check_attacks(FLAGS.attacks)
    dataset = experiment.load_data(FLAGS.dataset)
    model = experiment.load_model(FLAGS.model, FLAGS.dataset, FLAGS.checkpoint, FLAGS.seed)
    out_dir = experiment.output_dir("white_box", FLAGS.dataset, FLAGS.model)
    store = evaluation.RecordStore(experiment.records_path(out_dir))
    n = min(FLAGS.num_images, len(dataset))
    indices = evaluation.shard_indices(n, FLAGS.num_shards, FLAGS.shard_index)
    evaluation.run_experiment(
        model,
        dataset,
        attacks,
        experiment.preset_for(FLAGS.dataset),
        store,
        indices,
        FLAGS.batch_size,
        save_images_dir=f"{out_dir}/images" if FLAGS.save_images else None,
        overrides=experiment.attack_overrides(),
    )
    if FLAGS.num_shards > 1:
        print(f"shard {FLAGS.shard_index}/{FLAGS.num_shards} done: {store.path}; merge with scripts/merge_results.py")
        return
    print(experiment.report(store.records, out_dir, f"White box: {FLAGS.dataset} / {FLAGS.model}"))
    print(f"results in {out_dir}")


if __name__ == "__main__":
    app.run(main)
