"""Put the two protocols' results of one experiment side by side: P_suc, D̄, SSIM, smoothness and ms/image
of every attack under `paper` and `strong`, and one operating-characteristic plot with both (paper solid, strong dashed).

    python scripts/white_box.py --protocol=paper  ...   # then the same with --protocol=strong
    python scripts/compare_protocols.py --results_dir=results/white_box/fashion_mnist-c4

The two runs must be the same run but for the protocol (their run.json files are compared).

Reads <results_dir>/{paper,strong}/records.jsonl, keeps the images both runs attacked, writes <results_dir>/protocols.md (and protocols_<judge>.md
for transfer runs) and protocols_operating_characteristic[_<judge>].png; when both runs were made with
--trace_iterations, also protocols_trace.png: C&W / sC&W's loss, distortion and share adversarial at every
iteration of their first batch under both protocols (read from each run's TensorBoard events, trace/).
"""

import os

import numpy as np
from absl import app, flags

from smoothadv_tf import presets as attacks_lib
from smoothadv_tf.cli import run_script
from smoothadv_tf.records import atomic_write, identity_differences, read_records, read_run_identity
from smoothadv_tf.statistics import operating_characteristic, per_image_outcomes, summarize

FLAGS = flags.FLAGS
flags.DEFINE_string("results_dir", None, "an experiment folder holding paper/ and strong/", required=True)

PROTOCOLS = ("paper", "strong")
COLUMNS = ("P_suc", "D̄", "SSIM", "smoothness", "ms/image")


def main(_):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    identities = {}
    for protocol in PROTOCOLS:
        path = os.path.join(FLAGS.results_dir, protocol, "run.json")
        if not os.path.exists(path):
            raise app.UsageError(f"{path} not found: run the experiment with --protocol={protocol} first")
        identity = read_run_identity(path)
        # Only the protocol and what it sets for C&W / sC&W may differ between the two runs.
        identity.pop("protocol", None)
        identity["attacks"] = {
            a: runs for a, runs in identity.get("attacks", {}).items() if a not in attacks_lib.OPTIMALITY_ATTACKS
        }
        identities[protocol] = identity
    diffs = identity_differences(identities["paper"], identities["strong"])
    if diffs:
        raise app.UsageError(f"{FLAGS.results_dir}: the two runs differ beyond the protocol ({'; '.join(diffs)})")
    records = {}
    for protocol in PROTOCOLS:
        path = os.path.join(FLAGS.results_dir, protocol, "records.jsonl")
        if not os.path.exists(path):
            raise app.UsageError(f"{path} not found: run the experiment with --protocol={protocol} first")
        records[protocol] = read_records(path)
    # Compare on the same images: a run of one protocol may cover fewer images than the other's.
    common = set.intersection(*({r["image_id"] for r in rs if r["attack"] == "clean"} for rs in records.values()))
    records = {p: [r for r in rs if r["image_id"] in common] for p, rs in records.items()}
    judges = sorted({r.get("evaluated_on", "self") for r in records["paper"]})
    for judge in judges:
        summaries = {p: summarize(records[p], judge) for p in PROTOCOLS}
        lines = [
            f"{FLAGS.results_dir}" + ("" if judge == "self" else f", judged on {judge}"),
            "",
            "accuracy "
            + ", ".join(f"{p} {summaries[p]['accuracy']:.4f} ({summaries[p]['images']} images)" for p in PROTOCOLS),
            "",
            "| attack | " + " | ".join(f"{column} {p}" for p in PROTOCOLS for column in COLUMNS) + " |",
            "|---|" + "---|" * len(COLUMNS) * len(PROTOCOLS),
        ]
        for attack in attacks_lib.ATTACK_NAMES:
            cells = []
            for p in PROTOCOLS:
                row = summaries[p]["attacks"].get(attack)
                if row is None:
                    same = p == "strong" and attack not in attacks_lib.OPTIMALITY_ATTACKS and cells[0]
                    # only C&W / sC&W differ between protocols
                    cells += ["as paper" if same else ""] + [""] * (len(COLUMNS) - 1)
                    continue
                cells += [
                    f"{row['p_suc']:.3f}",
                    f"{row['mean_distortion']:.3f}",
                    f"{row['mean_ssim']:.3f}" if row.get("n_ssim") else "n/a",
                    f"{row['mean_smoothness']:.3f}" if row.get("n_smoothness") else "n/a",
                    f"{row['ms_per_image']:.0f}" if row.get("n_timed") else "n/a",
                ]
            if any(cells):
                lines.append(f"| {attacks_lib.DISPLAY_NAMES[attack]} | " + " | ".join(cells) + " |")
        table = "\n".join(lines) + "\n"
        suffix = "" if judge == "self" else f"_{judge}"
        atomic_write(os.path.join(FLAGS.results_dir, f"protocols{suffix}.md"), table)
        print(table)

        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        outcomes = {p: per_image_outcomes(records[p], judge) for p in PROTOCOLS}
        d_max = max(
            (v for o in outcomes.values() for per in o.values() for v in per.values() if v is not None), default=1.0
        )
        grid = np.linspace(0, d_max * 1.02, 400)
        # one colour per attack (the style tells the protocol): the ten of matplotlib's cycle, then black
        colors = {a: f"C{k}" if k < 10 else "black" for k, a in enumerate(attacks_lib.ATTACK_NAMES)}
        for p, style in (("paper", "-"), ("strong", "--")):
            for attack, per in outcomes[p].items():
                if p == "strong" and attack not in attacks_lib.OPTIMALITY_ATTACKS:
                    continue  # the other attacks are the same under both protocols
                curve = operating_characteristic(list(per.values()), grid)
                label = attacks_lib.DISPLAY_NAMES[attack] + (
                    f" ({p})" if attack in attacks_lib.OPTIMALITY_ATTACKS else ""
                )
                ax.plot(grid, curve, style, color=colors[attack], label=label)
        ax.set_xlabel("distortion D (L2, [0,1] pixels)")
        ax.set_ylabel("P(D): probability of success")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("paper protocol (solid) vs strong (dashed)" + ("" if judge == "self" else f", on {judge}"))
        fig.tight_layout()
        path = os.path.join(FLAGS.results_dir, f"protocols_operating_characteristic{suffix}.png")
        fig.savefig(path + ".tmp.png", dpi=120)
        plt.close(fig)
        os.replace(path + ".tmp.png", path)
    print(f"wrote {FLAGS.results_dir}/protocols*.md and protocols_operating_characteristic*.png")
    plot_traces(plt)


TRACE_PANELS = (("loss", "batch-mean loss (log scale)"), ("distortion", "batch-mean distortion D"),
                ("adversarial", "share adversarial"))  # fmt: skip


def plot_traces(plt) -> None:
    """protocols_trace.png: C&W and sC&W's per-iteration curves (--trace_iterations: trace/ of each run's
    TensorBoard events, where its tensorboard.json says; <protocol>/tb/ by default) of
    both runs' first batch, paper solid, strong dashed, the strong protocol's binary-search steps one after
    another. Says so, and draws nothing, when a run has no traces."""
    from smoothadv_tf.tensorboard_log import TRACE_TAGS, read_scalars, recorded_location

    found = {}
    for p in PROTOCOLS:
        events = recorded_location(os.path.join(FLAGS.results_dir, p))  # where that run wrote its events
        for a in attacks_lib.OPTIMALITY_ATTACKS:
            folder = os.path.join(events, "trace", a) if events is not None else None
            if folder is not None and os.path.isdir(folder):
                curves = read_scalars(folder)
                if curves:  # a first batch the model got all wrong traces nothing
                    found[(p, a)] = curves
    if not {p for p, _ in found} >= set(PROTOCOLS):
        print("no per-iteration traces of both runs (<protocol>/tb/trace/): run them with --trace_iterations "
              "for protocols_trace.png")  # fmt: skip
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for (protocol, attack), curves in sorted(found.items()):
        for ax, (field, label) in zip(axes, TRACE_PANELS):
            steps, values = zip(*curves[TRACE_TAGS[field]])
            color = f"C{attacks_lib.OPTIMALITY_ATTACKS.index(attack)}"
            style = "-" if protocol == "paper" else "--"
            ax.plot(steps, values, style, color=color, label=f"{attacks_lib.DISPLAY_NAMES[attack]} ({protocol})")
            ax.set_xlabel("iteration (binary-search steps one after another)")
            ax.set_ylabel(label)
            ax.set_yscale("log" if field == "loss" else "linear")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("C&W and sC&W on their first batch: paper protocol (solid) vs strong (dashed)")
    fig.tight_layout()
    path = os.path.join(FLAGS.results_dir, "protocols_trace.png")
    fig.savefig(path + ".tmp.png", dpi=120)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    print(f"wrote {path}")


if __name__ == "__main__":
    run_script(main)
