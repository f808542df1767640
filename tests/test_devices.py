"""Several devices in one process (tf.distribute.MirroredStrategy): the same records as one device."""

from __future__ import annotations

import os
import subprocess
import sys

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


@pytest.mark.slow
def test_two_devices_record_exactly_what_one_device_records(tmp_path, c4_path):
    """All six attacks (the smoothing solve included) through white_box.py, on the default single device and
    on the CPU split into two logical devices under MirroredStrategy: byte-identical records and summary. Each
    image keeps its own state in every loop, and a replica runs the very loop one device runs on its share,
    so nothing but batch composition changes; here it changes nothing at all (bitwise)."""
    _white_box(tmp_path / "one", c4_path)
    two = _white_box(tmp_path / "two", c4_path, "--devices=CPU:0,CPU:1")
    assert "MirroredStrategy" in two.stderr  # the batches really were split over two replicas
    run = "white_box/fashion_mnist-c4/paper"
    for name in ("records.jsonl", "summary.json", "run.json"):
        one_bytes = (tmp_path / "one" / run / name).read_bytes()
        assert one_bytes == (tmp_path / "two" / run / name).read_bytes(), name
    records = (tmp_path / "one" / run / "records.jsonl").read_text().splitlines()
    runs = sum(len(evaluation.attack_runs(a, "mnist", overrides={"iterations": 5})) for a in presets.ATTACK_NAMES)
    assert len(records) == 15 * (1 + runs)  # a clean record and one per attack run (ε sweeps included) per image
