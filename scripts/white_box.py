"""Table 1 / Figures 2-3: white-box attacks on one model (paper §5.3).

    python scripts/white_box.py --dataset=fashion_mnist --model=c4 --num_images=1000
    python scripts/white_box.py --dataset=nips17 --data_dir=DIR --model=inception_v3 \
        --checkpoint=models/inception_v3.ckpt

Rerunning the same command resumes; --num_shards/--shard_index split the images (merge with
scripts/merge_results.py).
"""

from absl import app, flags

from smoothadv_tf import experiment

FLAGS = flags.FLAGS
experiment.define_common_flags()
flags.DEFINE_boolean("save_images", False, "also write the adversarial images as 8-bit PNGs")


def main(_):
    experiment.check_attacks(FLAGS.attacks)
    dataset = experiment.load_data(FLAGS.dataset)
    model = experiment.load_model(FLAGS.model, FLAGS.dataset, FLAGS.checkpoint, FLAGS.seed)
    records, out_dir = experiment.run("white_box", model, dataset, save_images=FLAGS.save_images)
    if records is not None:
        print(experiment.report(records, out_dir, f"White box: {FLAGS.dataset} / {FLAGS.model}"))
        print(f"results in {out_dir}")


if __name__ == "__main__":
    app.run(main)
