"""Table 2: white-box attacks against adversarially trained networks (paper §5.3, "Adversarial training").

    python scripts/adversarial_training.py --dataset=fashion_mnist            # C4 trained with step l.l
    python scripts/adversarial_training.py --dataset=nips17 --data_dir=DIR --model=adv_inception_v3 \
        --checkpoint=models/adv_inception_v3.ckpt

With --model=c4_adv and no checkpoint, the adversarially trained C4 is trained once and cached under models/.
"""

from absl import app, flags

from smoothadv_tf import experiment, report, runner

FLAGS = flags.FLAGS
experiment.define_common_flags()
FLAGS.set_default("model", "c4_adv")


def main(_):
    if FLAGS.model not in ("c4_adv", "adv_inception_v3"):
        raise app.UsageError(f"--model={FLAGS.model}: this experiment attacks c4_adv or adv_inception_v3")
    config = experiment.config_from_flags()
    dataset = runner.load_data(config)
    model = runner.load_model(config)
    records, out_dir = runner.run(config, "adversarial_training", model, dataset)
    if records is not None:
        title = f"Adversarially trained: {config.dataset} / {config.model}, {config.protocol} protocol"
        print(report.report(records, out_dir, title, tensorboard_dir=config.tensorboard_path(out_dir)))
        print(f"results in {out_dir}")
        experiment.print_tensorboard_hint(config, out_dir)


if __name__ == "__main__":
    experiment.run_script(main)
