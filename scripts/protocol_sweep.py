"""Why the paper's C&W / sC&W findings depend on the protocol: D̄ of C&W and sC&W on the same images as a
function of the number of binary-search steps over c (1 = the paper's protocol's one constant, 5 = strong), and
of the number of Adam iterations at the paper's fixed c (both with the paper's margin-judged best iterate), and
with the strong protocol's best-iterate rule at 1 and at N binary-search steps.

    python scripts/protocol_sweep.py --dataset=fashion_mnist --model=c4 --num_images=500

Writes protocol_sweep.json and protocol_sweep.png under <output_dir>/protocol_sweep/<dataset>-<model>/ (and
both to TensorBoard, tb/protocol_sweep, unless --notensorboard) and prints the table. Only images the model classifies correctly count; D̄ is over each attack's successes, P_suc
over all counted images (§5.1); the best iterate follows each protocol's rule (margin-judged for the paper's,
8-bit misclassification for the strong one).
"""

import json
import os
import time

import numpy as np
from absl import app, flags

from smoothadv_tf import experiment, runner
from smoothadv_tf.config import attack_runs, model_tag

FLAGS = flags.FLAGS
experiment.define_common_flags(
    default_attacks=("carlini_wagner_l2", "smooth_carlini_wagner_l2"), default_num_images=500
)
flags.DEFINE_integer("max_binary_steps", 5, "binary-search steps 1..N", lower_bound=1)
flags.DEFINE_list("iteration_counts", ["100", "200", "500"], "Adam iterations at the fixed c (one binary step)")


SWEPT = ("binary_search_steps", "iterations", "best_iterate")  # set by the sweep itself, per measurement


def main(_):
    config = experiment.config_from_flags()
    swept = [item.partition("=")[0] for item in FLAGS.attack_params if item.partition("=")[0] in SWEPT]
    if swept:
        raise app.UsageError(
            f"--attack_params: {', '.join(swept)}: the sweep sets it (--max_binary_steps, --iteration_counts)"
        )
    ignored = [f"--{name}" for name in ("protocol", "num_shards", "shard_index") if FLAGS[name].present]
    ignored += ["--trace_iterations"] if FLAGS.trace_iterations else []
    if ignored:
        raise app.UsageError(
            f"{', '.join(ignored)}: not used here (the sweep runs both protocols' rules, unsharded, untraced)"
        )
    try:
        iteration_counts = [int(v) for v in FLAGS.iteration_counts]
    except ValueError as e:
        raise app.UsageError(f"--iteration_counts={FLAGS.iteration_counts}: {e}") from e
    if min(iteration_counts) < 1:
        raise app.UsageError(f"--iteration_counts={FLAGS.iteration_counts}: must be positive")
    import matplotlib

    from smoothadv_tf import attacks as attacks_lib  # TensorFlow, once the flags are checked
    from smoothadv_tf.models.loading import fit_labels

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = runner.load_data(config)
    model = runner.load_model(config)
    dataset = fit_labels(model, dataset, config.dataset, config.model)
    batch = runner.batch_size(config, model, dataset)
    x, y = dataset.images[: config.num_images], dataset.labels[: config.num_images]
    keep = np.argmax(attacks_lib.logits_of(model, x).numpy(), -1) == y
    x, y = x[keep], y[keep]
    if not len(x):
        raise app.UsageError(f"--num_images={config.num_images}: the model classifies none of them correctly")
    preset = config.preset_name
    overrides = dict(config.attack_params)
    rows = []

    def measure(attack, sweep, value, rule, **params):
        protocol = "strong" if rule == "misclassified" else "paper"
        # the preset with the overrides this attack takes (attack_runs filters them per attack)
        base = attack_runs(attack, preset, True, overrides, protocol)[0]
        params = {**base, **params, "best_iterate": rule}
        out = {"attack": attack, "sweep": sweep, "value": value, "best_iterate": rule}
        start = time.perf_counter()
        for lo in range(0, len(x), batch):
            with runner.device_scope(config):
                r = attacks_lib.run_attack(attack, model, x[lo : lo + batch], y[lo : lo + batch], **params)
            out.setdefault("success", []).extend(r.success.tolist())
            out.setdefault("distortion", []).extend(r.distortion.tolist())
        s, d = np.array(out.pop("success")), np.array(out.pop("distortion"))
        out.update(p_suc=float(s.mean()), mean_distortion=float(d[s].mean()), seconds=time.perf_counter() - start)
        rows.append(out)
        print(
            f"{attacks_lib.DISPLAY_NAMES[attack]:5s} {sweep}={value:<4d} best iterate {rule:13s} "
            f"P_suc {out['p_suc']:.3f}  D̄ {out['mean_distortion']:.3f}  ({out['seconds']:.0f} s)",
            flush=True,
        )

    attacks = config.attacks
    for attack in attacks:
        # The paper's rule along both axes; the strong protocol's rule at both ends of the binary search (it
        # separates the two ingredients of the strong protocol: the search over c and the best-iterate rule).
        for steps in range(1, FLAGS.max_binary_steps + 1):
            measure(attack, "binary_search_steps", steps, "margin", binary_search_steps=steps, iterations=100)
        for iterations in iteration_counts:
            if iterations != 100:
                measure(attack, "iterations", iterations, "margin", binary_search_steps=1, iterations=iterations)
        for steps in sorted({1, FLAGS.max_binary_steps}):
            measure(attack, "binary_search_steps", steps, "misclassified", binary_search_steps=steps, iterations=100)

    out_dir = os.path.join(config.output_dir, "protocol_sweep", f"{config.dataset}-{model_tag(config.model)}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "protocol_sweep.json.tmp"), "w") as f:
        json.dump({"images": int(len(x)), "preset": preset, "overrides": overrides, "rows": rows}, f, indent=2)
    os.replace(os.path.join(out_dir, "protocol_sweep.json.tmp"), os.path.join(out_dir, "protocol_sweep.json"))

    def curve(attack, rule, sweep):
        """(x, D̄) points of one sweep; one binary step of 100 iterations is the first point of both."""
        pts = {}
        for r in rows:
            if r["attack"] == attack and r["best_iterate"] == rule:
                if r["sweep"] == sweep:
                    pts[r["value"]] = r["mean_distortion"]
                elif sweep == "iterations" and r["value"] == 1:
                    pts[100] = r["mean_distortion"]
        return sorted(pts.items())

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, sweep, label in (
        (axes[0], "binary_search_steps", "binary-search steps over c (100 iterations each)"),
        (axes[1], "iterations", "Adam iterations at the fixed c (one binary-search step)"),
    ):
        for k, attack in enumerate(attacks):
            for rule, style in (("margin", "-o"), ("misclassified", "--s")):
                points = curve(attack, rule, sweep)
                if points:
                    xs, ds = zip(*points)
                    name = attacks_lib.DISPLAY_NAMES[attack]
                    ax.plot(xs, ds, style, color=f"C{k}", label=f"{name}, best iterate: {rule}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("D̄ (L2, 8-bit images)")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{config.dataset} / {config.model}, {len(x)} correctly classified images; paper protocol = 1 step, margin"
    )
    fig.tight_layout()
    path = os.path.join(out_dir, "protocol_sweep.png")
    fig.savefig(path + ".tmp.png", dpi=110)
    os.replace(path + ".tmp.png", path)
    print(f"wrote {out_dir}/protocol_sweep.json and protocol_sweep.png")
    logdir = config.tensorboard_path(out_dir)
    if logdir is not None:
        from smoothadv_tf import tensorboard_log

        points = [
            (f"{stat}_by_{r['sweep']}/{r['attack']}_{r['best_iterate']}", r["value"], r[stat])
            for r in rows
            for stat in ("mean_distortion", "p_suc")
        ]
        print(f"and {tensorboard_log.write_points(logdir, 'protocol_sweep', points, {'protocol_sweep': path})}")


if __name__ == "__main__":
    experiment.run_script(main)
