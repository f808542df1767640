"""Several devices in one process (tf.distribute.MirroredStrategy): the same records as one device."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from smoothadv_tf import devices, evaluation, presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "items, expected",
    [
        ([], []),
        (["gpu:0", "/device:GPU:1", "/gpu:2"], ["GPU:0", "GPU:1", "GPU:2"]),
        (["CPU:0", " cpu:1"], ["CPU:0", "CPU:1"]),
    ],
)
def test_device_names_are_normalised(items, expected):
    assert devices.parse_devices(items) == expected


@pytest.mark.parametrize(
    "items, problem",
    [
        (["tpu:0"], "is not a device name"),
        (["GPU"], "is not a device name"),
        (["GPU:-1"], "is not a device name"),
        (["GPU:0", "gpu:0"], "named twice"),
        (["GPU:0", "CPU:0"], "not both"),
    ],
)
def test_bad_device_names_are_refused(items, problem):
    with pytest.raises(ValueError, match=problem):
        devices.parse_devices(items)


def _white_box(out_dir, c4_path, *extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")}
    env = {**env, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        os.path.join(ROOT, "scripts", "white_box.py"),
        "--dataset=fashion_mnist",
        "--model=c4",
        f"--checkpoint={c4_path}",
        "--num_images=15",  # batches of 10 and 5: shares of 5, then 3 (+1 padding image) per device
        "--batch_size=10",
        "--attack_params=iterations=5",
        f"--output_dir={out_dir}",
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=True)


def _untimed(text: str) -> str:
    """Records or a summary with the wall-clock fields (`seconds`, `ms_per_image`) blanked: the one thing
    two identical runs may not share."""
    return re.sub(r'"(seconds|ms_per_image)": [0-9.eE+-]+', r'"\1": T', text)


ONEDNN_OFF = os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0"
# oneDNN's kernels (TensorFlow's default on recent x86 CPUs) may round differently for another batch size: a
# replica's share is half the batch. Measured on this AVX-512 CPU: distortions, SSIM, PSNR and smoothness within
# 1e-4 relative, decisions identical; with TF_ENABLE_ONEDNN_OPTS=0 the records are bitwise equal.
FLOAT_RTOL = 1e-3


def _assert_same_records(a: str, b: str, name: str) -> None:
    """Equal but for the wall-clock fields: bitwise with oneDNN off, else every non-float field equal and the
    floats within FLOAT_RTOL (the largest relative difference is printed)."""
    if ONEDNN_OFF:
        assert _untimed(a) == _untimed(b), name
        return
    parse = (lambda t: [json.loads(line) for line in t.splitlines()]) if name.endswith(".jsonl") else json.loads
    pairs = list(zip(_flat(parse(a)), _flat(parse(b)), strict=True))
    worst = 0.0
    for (path, x), (other_path, y) in pairs:
        assert path == other_path, (name, path, other_path)  # the same field of the same record
        if path[-1] in ("seconds", "ms_per_image") or (isinstance(x, float) and math.isnan(x) and y != y):
            continue
        if isinstance(x, float) and isinstance(y, float):
            assert x == pytest.approx(y, rel=FLOAT_RTOL), (name, path)
            worst = max(worst, abs(x - y) / max(abs(x), 1e-12))
        else:
            assert x == y, (name, path, x, y)
    print(f"{name}: largest relative difference between one and two devices {worst:.2e}")


def _flat(value, path=()):
    """(path, leaf) pairs of nested JSON values, in order."""
    if isinstance(value, dict):
        for key in value:
            yield from _flat(value[key], (*path, key))
    elif isinstance(value, list):
        for k, item in enumerate(value):
            yield from _flat(item, (*path, k))
    else:
        yield path, value


@pytest.mark.slow
def test_two_devices_record_what_one_device_records(tmp_path, c4_path):
    """All six attacks (the smoothing solve included) through white_box.py, on the default single device and
    on the CPU split into two logical devices under MirroredStrategy: the same records and summary. Each image
    keeps its own state in every loop, and a replica runs the very loop one device runs on its share, so
    nothing but batch composition changes: bitwise nothing with oneDNN off; with it on, float rounding only."""
    _white_box(tmp_path / "one", c4_path)
    two = _white_box(tmp_path / "two", c4_path, "--devices=CPU:0,CPU:1")
    assert "MirroredStrategy" in two.stderr  # the batches really were split over two replicas
    run = "white_box/fashion_mnist-c4/paper"
    one, other = tmp_path / "one" / run, tmp_path / "two" / run
    assert (one / "run.json").read_bytes() == (other / "run.json").read_bytes()
    for name in ("records.jsonl", "summary.json"):  # but for the wall-clock each record carries
        text = (one / name).read_text()
        assert _untimed(text) != text, name
        _assert_same_records(text, (other / name).read_text(), name)
    records = (tmp_path / "one" / run / "records.jsonl").read_text().splitlines()
    runs = sum(len(evaluation.attack_runs(a, "mnist", overrides={"iterations": 5})) for a in presets.PAPER_ATTACKS)
    assert len(records) == 15 * (1 + runs)  # a clean record and one per attack run (ε sweeps included) per image


# ------------------------------------------------------------------------------------------ memory budget
def _inception_like(side: int):
    """A small functional CNN whose activations are known: three same-size convolutions of 8 channels."""
    import keras

    inputs = keras.Input((side, side, 3))
    net = inputs
    for k in range(3):
        net = keras.layers.Conv2D(8, 3, padding="same", name=f"conv{k}")(net)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(net))
    return keras.Model(inputs, outputs)


def test_activation_bytes_count_the_forward_tensors_not_the_weights():
    """Every tensor of one forward pass, from the traced graph: the three 8-channel float32 feature maps
    dominate, the count scales with the pixels (a model built for any input size is costed at the size it
    gets), weights do not count (they do not grow with the batch), and float16 activations count half."""
    import keras

    model = _inception_like(None)
    small, large = devices.activation_bytes(model, (64, 64, 3)), devices.activation_bytes(model, (128, 128, 3))
    assert 4 * 3 * 64 * 64 * 8 <= small < 4 * 10 * 64 * 64 * 8  # the maps (+ bias adds, the input), not more
    assert large == pytest.approx(4 * small, rel=0.01)
    heavy = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(100_000)])
    assert devices.weight_bytes(heavy) > 25e6
    assert devices.activation_bytes(heavy, (8, 8, 1)) < 2e6  # 400 kB of logits (and their bias add), no weights
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half = _inception_like(None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert devices.activation_bytes(half, (64, 64, 3)) < 0.75 * small


def test_batch_size_fits_the_budget_and_names_the_implicit_gradient():
    model = _inception_like(None)
    shape = (128, 128, 3)
    smooth = {"smooth_carlini_wagner_l2": {"solver": "cg", "cg_iterations": 50, "cg_gradient": "autodiff"}}
    per_image = devices.estimate_bytes_per_image(model, shape, smooth)
    assert per_image["attack"] == "smooth_carlini_wagner_l2"
    assert per_image["smoothing"] == 4 * 128 * 128 * 3 * 50 * devices.CG_AUTODIFF_IMAGES_PER_ITERATION
    budget = devices.weight_bytes(model) + 10.5 * per_image["total"]
    batch, why = devices.choose_batch_size(model, shape, smooth, budget)
    assert batch == 10  # the largest batch whose estimate fits
    assert "would allow" in why  # the implicit gradient keeps no CG trajectory: a larger batch fits
    implicit = {"smooth_carlini_wagner_l2": {**smooth["smooth_carlini_wagner_l2"], "cg_gradient": "implicit"}}
    larger, why_implicit = devices.choose_batch_size(model, shape, implicit, budget)
    assert larger > batch and "would allow" not in why_implicit
    assert devices.choose_batch_size(model, shape, smooth, budget, replicas=3)[0] == 30  # the budget is per device
    plain = {"carlini_wagner_l2": {}}
    assert devices.choose_batch_size(model, shape, {**plain, **smooth}, budget)[0] == 10  # the most demanding
    assert devices.choose_batch_size(model, shape, plain, budget)[0] > 10
    tiny, why_tiny = devices.choose_batch_size(model, shape, smooth, budget / 20)
    assert tiny == 1 and "smaller than one image" in why_tiny


def test_run_experiment_runs_each_attack_per_replica_under_a_strategy(c4_model, fashion_test, tmp_path):
    """evaluation.run_experiment(strategy=...) enters the strategy's scope and every attack loop then runs
    through strategy.run (the distributed traced loop is built), with the records of a run without it."""
    import tensorflow as tf

    from smoothadv_tf import attacks

    def run(strategy, name):
        with evaluation.RecordStore(str(tmp_path / f"{name}.jsonl")) as store:
            evaluation.run_experiment(
                c4_model, fashion_test, ["fgsm", "smooth_pgd2_latent"], "mnist", store, np.arange(12), 5,
                single_run=True, progress=False, overrides={"iterations": 3}, strategy=strategy,
            )  # fmt: skip
            assert all(r["seconds"] > 0 for r in store.records if r["attack"] != "clean")
            return [{k: v for k, v in r.items() if k != "seconds"} for r in store.records]  # all but wall-clock

    plain = run(None, "plain")
    assert not any(t._per_strategy for t in attacks._COMPILED[c4_model].values())
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert run(strategy, "mirrored") == plain
    distributed = [t for t in attacks._COMPILED[c4_model].values() if strategy in t._per_strategy]
    assert len(distributed) == 2  # both attacks' loops ran through strategy.run


DENSE_PEAK = """
import sys
import numpy as np
from smoothadv_tf.smoothing import Smoother

def status(field):  # kB, from the kernel's accounting of this process
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])

side, batch = int(sys.argv[1]), int(sys.argv[2])
x = np.random.default_rng(0).uniform(0, 1, (batch, side, side, 3)).astype(np.float32)
Smoother(x[:1], alpha=0.95, solver="cg", iterations=2)(x[:1])  # TensorFlow's own start-up, outside the peak
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current resident size
float(np.sum(Smoother(x, alpha=0.95, solver="dense")(x)))
print((status("VmHWM") - before) * 1024)
"""


def test_small_images_get_their_batch_from_the_estimate_with_the_dense_smoothing(tmp_path, c4_path):
    """Up to 64x64 the dense ŝ_α's n x n matrices dominate memory: they are counted per image and per batch,
    the count bounds the peak measured building one (48x48, batches of 1 and 3, in fresh processes), and
    white_box.py takes its batch from that estimate under --memory_budget_gb instead of a fixed 100."""
    model = _inception_like(None)
    dense = {"smooth_pgd2": {"solver": "dense"}}
    side = 48
    estimate = devices.estimate_bytes_per_image(model, (side, side, 3), dense)
    matrix = 4 * (side * side) ** 2
    assert estimate["smoothing"] == devices.DENSE_MATRICES_PER_IMAGE * matrix
    assert estimate["batch_fixed"] == devices.DENSE_MATRICES_PER_BATCH * matrix
    # "auto" at 48 x 48 is Chebyshev for a single image and sPGD₂'s 10 solves (the cost model's choice): a few
    # image-sized vectors and the 4 row-coefficient arrays of the 4-neighbourhood
    spgd = {"smooth_pgd2": {"solver": "auto", "iterations": 10}}
    auto = devices.estimate_bytes_per_image(model, (side, side, 3), spgd)
    assert auto["smoothing"] == 4 * side * side * 3 * (devices.CG_IMPLICIT_IMAGES + 4) and auto["batch_fixed"] == 0
    # at 8 x 8 and sC&W's 200 solves the cost model picks dense, and so does the estimate
    tiny = devices.estimate_bytes_per_image(model, (8, 8, 3), {"smooth_carlini_wagner_l2": {"solver": "auto"}})
    assert tiny["smoothing"] == devices.DENSE_MATRICES_PER_IMAGE * 4 * 64**2
    budget = devices.weight_bytes(model) + estimate["batch_fixed"] + 3.5 * estimate["total"]
    assert devices.choose_batch_size(model, (side, side, 3), dense, budget)[0] == 3

    env = {**os.environ, "PYTHONPATH": ROOT}
    peaks = [
        int(subprocess.run([sys.executable, "-c", DENSE_PEAK, str(side), str(b)], env=env, capture_output=True,
                           text=True, timeout=300, check=True).stdout.split()[-1])
        for b in (1, 3)
    ]  # fmt: skip
    for b, peak in zip((1, 3), peaks):  # on the safe side of the measured peak, and not far off it
        smoothing = b * estimate["smoothing"] + estimate["batch_fixed"]
        assert peak <= smoothing <= 2.5 * peak, (b, [p / matrix for p in peaks])

    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "white_box.py"), f"--checkpoint={c4_path}",
         "--attacks=smooth_pgd2", "--attack_params=iterations=2,solver=dense", "--num_images=7", "--memory_budget_gb=0.06",
         f"--output_dir={tmp_path}"],
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    batch = int(re.search(r"--batch_size not given: batches of (\d+)", done.stdout).group(1))
    assert 1 <= batch < 7, done.stdout  # 0.06 GiB holds a few 28x28 dense smoothings (~18 MB each), not 100
    assert "smooth_pgd2's smoothing" in done.stdout
