"""TensorBoard output (smoothadv_tf.tensorboard_log) read back with TensorBoard's own reader
(tensorboard.backend.event_processing.event_accumulator) and checked against summary.json and the records; the
per-iteration traces against the attack run again by hand and against the loss the model gives at iteration 0;
resumed and sharded runs write no point twice."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import run_script

from smoothadv_tf import attacks, report, runner, statistics
from smoothadv_tf.config import RunConfig
from smoothadv_tf.records import read_records
from smoothadv_tf.tensorboard_log import _replacing, write_points

ATTACKS = ("fgsm", "carlini_wagner_l2", "ddn")
PARAMS = {"iterations": 8}  # C&W and DDN: 8 iterations (the paper protocol: one binary-search step)
RUN = os.path.join("white_box", "fashion_mnist-c4", "paper")


def folders(path) -> list[str]:
    """The folders in `path`, hidden ones too (a staging folder left behind would be one of TensorBoard's runs)."""
    return sorted(name for name in os.listdir(path) if os.path.isdir(os.path.join(path, name)))


def accumulate(folder: str):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(folder, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def scalars(folder: str) -> dict:
    """{tag: [(step, value)]} by TensorBoard's reader (tf.summary v2 writes scalars as tensors)."""
    from tensorboard.util import tensor_util

    acc = accumulate(folder)
    out = {}
    for tag in acc.Tags()["tensors"]:
        values = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
        if all(v.ndim == 0 for _, v in values):
            out[tag] = [(step, float(v)) for step, v in values]
    return out


def images(folder: str) -> dict:
    """{tag: [decoded images]} by TensorBoard's reader (tf.summary.image: width, height, then PNGs)."""
    import tensorflow as tf
    from tensorboard.util import tensor_util

    acc = accumulate(folder)
    out = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        blobs = tensor_util.make_ndarray(events[0].tensor_proto)
        if blobs.ndim == 1 and blobs.dtype == object:
            assert len(events) == 1, tag  # one step: written once
            out[tag] = [tf.io.decode_png(b).numpy() for b in blobs[2:]]
    return out


def config(tmp_path, c4_path, **fields) -> RunConfig:
    defaults = dict(
        dataset="fashion_mnist",
        model="c4",
        checkpoint=c4_path,
        num_images=12,
        batch_size=6,
        attacks=ATTACKS,
        attack_params=PARAMS,
        output_dir=str(tmp_path),
        trace_iterations=True,
    )
    return RunConfig(**{**defaults, **fields})


def run_and_report(cfg: RunConfig, model, dataset):
    records, out_dir = runner.run(cfg, "white_box", model, dataset, progress=False)
    if records is not None:
        report.report(records, out_dir, "test", tensorboard_dir=cfg.tensorboard_path(out_dir))
    return records, out_dir


@pytest.fixture(scope="module")
def model(c4_path):
    import keras

    return keras.models.load_model(c4_path)


def test_events_hold_the_summary_the_first_batch_and_its_traces(tmp_path, c4_path, model, fashion_test):
    cfg = config(tmp_path, c4_path)
    dataset = runner.load_data(cfg)
    records, out_dir = run_and_report(cfg, model, dataset)
    tb = os.path.join(out_dir, "tb")
    assert folders(tb) == ["images", "summary", "trace"]  # no staging folder left behind

    # summary/: every statistic of summary.json at step 0, the per-ε runs at step round(1000 ε)
    summary = json.load(open(os.path.join(out_dir, "summary.json")))
    got = scalars(os.path.join(tb, "summary"))
    assert got.pop("accuracy") == [(0, pytest.approx(summary["accuracy"]))]
    for attack, row in summary["attacks"].items():
        for stat in ("p_suc", "mean_distortion", "mean_ssim", "mean_psnr", "mean_smoothness"):
            assert got.pop(f"{stat}/{attack}") == [(0, pytest.approx(row[stat], nan_ok=True))], (attack, stat)
    fgsm = [r for r in records if r["attack"] == "fgsm"]
    targets = sorted({r["target"] for r in fgsm})
    assert len(targets) == 6
    clean = [r for r in records if r["attack"] == "clean"]
    for stat in ("p_suc", "mean_distortion", "mean_ssim", "mean_psnr", "mean_smoothness"):
        expected = [
            statistics.summarize(clean + [r for r in fgsm if r["target"] == t])["attacks"]["fgsm"][stat]
            for t in targets
        ]
        points = got.pop(f"{stat}_by_epsilon/fgsm")
        assert [s for s, _ in points] == [round(1000 * t) for t in targets]
        assert [v for _, v in points] == pytest.approx(expected, nan_ok=True), stat
    assert got == {}  # nothing else, and each tag once
    (plot,) = images(os.path.join(tb, "summary"))["operating_characteristic"]
    import tensorflow as tf

    png = tf.io.decode_png(tf.io.read_file(os.path.join(out_dir, "operating_characteristic.png")), channels=3)
    assert np.array_equal(plot, png.numpy())

    # images/<attack>: the first batch's attacked images, successes first; the perturbation mid-grey at 0
    x, y = dataset.images[:6], dataset.labels[:6]
    for attack in ATTACKS:
        params = cfg.attack_runs(attack)[-1]  # the last run: FGSM's largest ε
        with attacks.record_iterations() as traces:
            result = attacks.run_attack(attack, model, x, y, **params)
        shown = images(os.path.join(tb, "images", attack))
        assert sorted(shown) == ["adversarial", "magnified", "original", "perturbation"]
        attacked = np.flatnonzero(result.attacked)
        order = np.concatenate([attacked[result.success[attacked]], attacked[~result.success[attacked]]])[:3]
        assert len(shown["adversarial"]) == len(order) == 3
        for k, i in enumerate(order):
            assert np.array_equal(shown["adversarial"][k][..., 0], np.round(result.adversarial[i, ..., 0] * 255))
            assert np.array_equal(shown["original"][k][..., 0], np.round(result.original[i, ..., 0] * 255))
            r = result.adversarial[i] - result.original[i]
            unchanged = np.abs(r[..., 0]) == 0
            assert np.all(np.abs(shown["perturbation"][k][..., 0][unchanged].astype(int) - 128) <= 1)

        # trace/<attack>: the first batch's curves, as the attack records them when run again by hand
        if attack == "fgsm":
            assert not traces
            continue
        (trace,) = traces
        curves = scalars(os.path.join(tb, "trace", attack))
        assert sorted(curves) == ["trace/adversarial", "trace/distortion", "trace/loss"]
        for field in ("loss", "distortion", "adversarial"):
            steps, values = zip(*curves[f"trace/{field}"])
            assert list(steps) == list(range(8)) == trace.steps.tolist()
            np.testing.assert_allclose(values, getattr(trace, field), rtol=1e-6)
        # recording changes nothing: the runner's (traced) first batch is an untraced call's, bit for bit
        untraced = attacks.run_attack(attack, model, x, y, **params)
        assert np.array_equal(untraced.adversarial, result.adversarial)
        recorded = {r["image_id"]: r for r in records if r["attack"] == attack}
        assert [recorded[i]["distortion"] for i in dataset.ids[:6]] == untraced.distortion.tolist()

    # the strong protocol's run of the same images: its first binary-search step is the paper run, iteration
    # for iteration (same c, same Adam), so its first 8 points are the paper run's; compare_protocols.py
    # draws both
    strong = cfg.replace(protocol="strong")
    run_and_report(strong, model, dataset)
    strong_tb = strong.tensorboard_path(strong.output_path("white_box"))
    for attack in ("carlini_wagner_l2", "ddn"):
        paper_curve = scalars(os.path.join(tb, "trace", attack))["trace/loss"]
        strong_curve = scalars(os.path.join(strong_tb, "trace", attack))["trace/loss"]
        assert [s for s, _ in strong_curve] == list(range(40 if attack == "carlini_wagner_l2" else 8))
        assert strong_curve[:8] == paper_curve
    done = run_script("compare_protocols.py", f"--results_dir={os.path.dirname(out_dir)}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.path.getsize(os.path.join(os.path.dirname(out_dir), "protocols_trace.png")) > 0


def test_the_trace_at_iteration_0_is_the_models_loss_at_the_original(c4_model, fashion_test):
    """Iteration 0 judges x_o itself: C&W's loss is c·[margin]_+ of eq. (3) (‖r‖ = 0: the tanh map returns x_o
    to 1e-5), DDN's minus the cross-entropy; both against the model called here on the attacked images only.
    The loss falls and the share adversarial rises over the iterations."""
    import tensorflow as tf

    x, y = fashion_test.images[:40], fashion_test.labels[:40]
    logits = c4_model(x).numpy()
    attacked = logits.argmax(-1) == y
    assert 0 < attacked.sum() < len(y)  # the mean must leave the misclassified image out
    params = attacks.preset("mnist", "carlini_wagner_l2", iterations=20)
    with attacks.record_iterations() as traces:
        attacks.carlini_wagner_l2(c4_model, x, y, **params)
        attacks.ddn(c4_model, x, y, iterations=20)
    cw, ddn = traces
    onehot = np.eye(10)[y]
    margin = np.maximum((logits * onehot).sum(-1) - np.max(logits - 1e9 * onehot, -1) + params["margin"], 0)
    assert cw.attack == "carlini_wagner_l2" and cw.images == attacked.sum()
    assert cw.loss[0] == pytest.approx(params["initial_const"] * margin[attacked].mean(), rel=1e-4)
    assert cw.distortion[0] < 1e-3 and cw.adversarial[0] == 0
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits).numpy()
    assert ddn.attack == "ddn" and ddn.loss[0] == pytest.approx(-ce[attacked].mean(), rel=1e-4)
    for trace in (cw, ddn):
        assert trace.loss[-1] < trace.loss[0] and trace.adversarial[-1] > trace.adversarial[0]
        assert trace.steps.tolist() == list(range(20))


def test_the_trace_runs_through_the_binary_search_steps_and_the_other_loops(c4_model, fashion_test):
    """sC&W over 3 binary-search steps of 6 iterations: entries 0..17, z = 0 (r = ŝ_α(0) = 0 exactly) at the
    start of each step, and the first step's points those of a one-step run (the same c and Adam). FMN at
    iteration 0: the margin of eq. (3) without its positive part, m = 0, against the model called here."""
    x, y = fashion_test.images[:12], fashion_test.labels[:12]
    logits = c4_model(x).numpy()
    attacked = logits.argmax(-1) == y
    params = attacks.preset("mnist", "smooth_carlini_wagner_l2", iterations=6)
    with attacks.record_iterations() as traces:
        attacks.smooth_carlini_wagner_l2(c4_model, x, y, **{**params, "binary_search_steps": 3})
        attacks.smooth_carlini_wagner_l2(c4_model, x, y, **{**params, "binary_search_steps": 1})
        attacks.fmn(c4_model, x, y, iterations=5)
    three, one, fmn = traces
    assert three.steps.tolist() == list(range(18)) and three.iterations_per_step == 6
    assert [three.distortion[k] for k in (0, 6, 12)] == [0.0, 0.0, 0.0] and min(three.distortion[1:6]) > 0
    np.testing.assert_array_equal(three.loss[:6], one.loss)
    np.testing.assert_array_equal(three.distortion[:6], one.distortion)
    onehot = np.eye(10)[y]
    margin = (logits * onehot).sum(-1) - np.max(logits - 1e9 * onehot, -1)
    assert fmn.attack == "fmn" and fmn.loss[0] == pytest.approx(margin[attacked].mean(), rel=1e-4)


def test_a_failed_or_killed_write_leaves_the_old_folder_and_nothing_hidden(tmp_path):
    """_replacing: a writer that fails leaves the old folder as it was and no staging folder (TensorBoard would
    read it as a run); what a killed writer leaves (its staging folder; the old folder set aside between the
    two renames) is cleaned up, and the old folder put back, by the next writer."""
    import tensorflow as tf

    logdir = str(tmp_path)
    write_points(logdir, "run", [("a", 0, 1.0)])
    with pytest.raises(tf.errors.NotFoundError, match="missing.png"):
        write_points(logdir, "run", [("a", 0, 2.0)], figures={"f": str(tmp_path / "missing.png")})
    assert sorted(os.listdir(tmp_path)) == [".run.lock", "run"]
    assert scalars(str(tmp_path / "run")) == {"a": [(0, 1.0)]}
    # killed between the renames: the folder is set aside as .run.old, a staging folder is left
    os.replace(tmp_path / "run", tmp_path / ".run.old")
    (tmp_path / ".run.staging").mkdir()
    with pytest.raises(RuntimeError), _replacing(str(tmp_path / "run")):
        raise RuntimeError("killed")  # the next writer recovers first, then fails itself
    assert sorted(os.listdir(tmp_path)) == [".run.lock", "run"]
    assert scalars(str(tmp_path / "run")) == {"a": [(0, 1.0)]}
    write_points(logdir, "run", [("a", 0, 3.0)])
    assert scalars(str(tmp_path / "run")) == {"a": [(0, 3.0)]}
    assert sorted(os.listdir(tmp_path)) == [".run.lock", "run"]


def test_a_resumed_or_sharded_run_writes_no_point_twice(tmp_path, c4_path, model):
    """A run killed after its first batch and resumed: images/ and trace/ are the first run's, untouched (the
    resume does not attack that batch again); summary/ is rewritten whole from all the records (one point per
    tag). Two shards: only shard 0 writes images/ and trace/ (of its own first batch), neither writes summary/;
    the merge does, and equals the unsharded run's."""
    import subprocess
    import sys

    from conftest import ROOT

    whole = config(tmp_path / "whole", c4_path)
    dataset = runner.load_data(whole)
    first = whole.replace(num_images=6)
    _, out_dir = run_and_report(first, model, dataset)
    tb = os.path.join(out_dir, "tb")
    before = {
        p: os.stat(os.path.join(tb, p, f)).st_mtime_ns
        for p in ("images/ddn", "trace/ddn")
        for f in os.listdir(os.path.join(tb, p))
    }
    run_and_report(whole, model, dataset)  # resumes: the first 6 images are recorded
    after = {
        p: os.stat(os.path.join(tb, p, f)).st_mtime_ns
        for p in ("images/ddn", "trace/ddn")
        for f in os.listdir(os.path.join(tb, p))
    }
    assert after == before
    summary = json.load(open(os.path.join(out_dir, "summary.json")))
    assert summary["images"] == 12
    got = scalars(os.path.join(tb, "summary"))
    assert all(len(points) == len({s for s, _ in points}) for points in got.values())
    assert got["p_suc/ddn"] == [(0, pytest.approx(summary["attacks"]["ddn"]["p_suc"]))]
    assert len(os.listdir(os.path.join(tb, "summary"))) == 1  # one event file: the old one was replaced

    shards = [config(tmp_path / "sharded", c4_path, num_shards=2, shard_index=k) for k in (0, 1)]
    for shard in shards:
        assert run_and_report(shard, model, dataset)[0] is None
    sharded = shards[0].output_path("white_box")
    assert folders(os.path.join(sharded, "tb")) == ["images", "trace"]  # shard 1 wrote nothing
    own = shards[0].attack_runs("ddn")[0]
    with attacks.record_iterations() as traces:  # shard 0's first batch: images 0, 2, 4, ... (index mod 2)
        attacks.run_attack("ddn", model, dataset.images[0:12:2], dataset.labels[0:12:2], **own)
    np.testing.assert_allclose(
        [v for _, v in scalars(os.path.join(sharded, "tb", "trace", "ddn"))["trace/loss"]], traces[0].loss, rtol=1e-6
    )
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "merge_results.py"), f"--results_dir={sharded}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    merged = scalars(os.path.join(sharded, "tb", "summary"))
    assert merged.keys() == got.keys()
    for tag, points in got.items():
        assert merged[tag] == [(s, pytest.approx(v, nan_ok=True)) for s, v in points], tag
    assert len(read_records(os.path.join(sharded, "records.jsonl"))) == len(
        read_records(os.path.join(out_dir, "records.jsonl"))
    )


def test_notensorboard_writes_no_events_and_tensorboard_dir_moves_them(tmp_path, c4_path, model):
    cfg = config(tmp_path / "off", c4_path, num_images=6, tensorboard=False, trace_iterations=False, attacks=("ddn",))
    _, out_dir = run_and_report(cfg, model, runner.load_data(cfg))
    assert not any("tfevents" in name for _, _, files in os.walk(tmp_path / "off") for name in files)
    done = run_script("merge_results.py", f"--results_dir={out_dir}")  # the merge follows the run's choice
    assert done.returncode == 0, done.stderr[-2000:]
    assert not any("tfevents" in name for _, _, files in os.walk(tmp_path / "off") for name in files)
    elsewhere = tmp_path / "events"
    cfg = config(tmp_path / "moved", c4_path, num_images=6, tensorboard_dir=str(elsewhere), attacks=("ddn",))
    _, out_dir = run_and_report(cfg, model, runner.load_data(cfg))
    assert not os.path.exists(os.path.join(out_dir, "tb"))
    assert folders(elsewhere / RUN) == ["images", "summary", "trace"]  # the run's own place under it


WRITE_WITHOUT_TENSORBOARD = """
import sys
sys.modules["tensorboard"] = None  # not installed: tf.summary.scalar / image would raise TBNotInstalledError
import numpy as np
from smoothadv_tf import tensorboard_log
png = sys.argv[2]
import PIL.Image
PIL.Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(png)
tensorboard_log.write_points(sys.argv[1], "run", [("a/b", 3, 0.25), ("a/b", 5, 0.5)], figures={"fig": png})
print("written")
"""


def test_events_are_written_without_tensorboard_as_tensorboard_writes_them(tmp_path):
    """The scripts write events where the tensorboard package is not installed (TensorFlow alone, with the
    plugin metadata TensorBoard's own scalar and image summaries attach); TensorBoard's reader then files
    them under its scalars and images plugins and decodes the same values and pixels."""
    import subprocess
    import sys

    from conftest import ROOT
    from tensorboard.plugins.image import metadata as image_metadata
    from tensorboard.plugins.scalar import metadata as scalar_metadata

    from smoothadv_tf.tensorboard_log import plugin_metadata

    for ours, theirs in ((plugin_metadata("scalars"), scalar_metadata), (plugin_metadata("images"), image_metadata)):
        assert ours.SerializeToString() == theirs.create_summary_metadata("", "").SerializeToString()
    done = subprocess.run(
        [sys.executable, "-c", WRITE_WITHOUT_TENSORBOARD, str(tmp_path), str(tmp_path / "fig.png")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0 and "written" in done.stdout, done.stderr[-2000:]
    acc = accumulate(str(tmp_path / "run"))
    assert acc.SummaryMetadata("a/b").plugin_data.plugin_name == "scalars"
    assert acc.SummaryMetadata("fig").plugin_data.plugin_name == "images"
    assert scalars(str(tmp_path / "run")) == {"a/b": [(3, 0.25), (5, 0.5)]}
    (fig,) = images(str(tmp_path / "run"))["fig"]
    assert np.array_equal(fig, np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
