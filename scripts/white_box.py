"""Table 1 / Figures 2-3: white-box attacks on one model (paper §5.3).

    python scripts/white_box.py --dataset=fashion_mnist --model=c4 --num_images=1000
    python scripts/white_box.py --dataset=nips17 --data_dir=DIR --model=inception_v3 \
        --checkpoint=models/inception_v3.ckpt

--protocol=paper (default: the authors' C&W / sC&W, one binary-search step) or --protocol=strong (5 steps);
each protocol has its own results folder. Rerunning the same command resumes; --num_shards/--shard_index
split the images (merge with scripts/merge_results.py).
"""

from absl import flags

from smoothadv_tf import experiment, presets, report, runner

FLAGS = flags.FLAGS
experiment.define_common_flags()
flags.DEFINE_boolean("save_images", False, "also write the adversarial images as 8-bit PNGs")


def main(_):
    config = experiment.config_from_flags()
    dataset = runner.load_data(config)
    model = runner.load_model(config)
    records, out_dir = runner.run(config, "white_box", model, dataset, save_images=FLAGS.save_images)
    if records is not None:
        title = f"White box: {config.dataset} / {config.model}, {config.protocol} protocol"
        print(report.report(records, out_dir, title, tensorboard_dir=config.tensorboard_path(out_dir)))
        print(f"Protocol: {presets.PROTOCOL_DESCRIPTIONS[config.protocol]}.")
        print(f"results in {out_dir}")
        experiment.print_tensorboard_hint(config, out_dir)


if __name__ == "__main__":
    experiment.run_script(main)
