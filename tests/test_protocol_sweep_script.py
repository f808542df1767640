"""protocol_sweep.py gives each attack only the --attack_params it takes (an sC&W option no longer reaches C&W
as an unexpected keyword), and refuses overrides of what it sweeps and flags it would ignore."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import assert_refused, run_script


def run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return run_script("protocol_sweep.py", f"--output_dir={tmp_path}/out", *args, cwd=tmp_path)


@pytest.mark.slow
def test_an_option_of_one_attack_reaches_only_that_attack(tmp_path, c4_path):
    done = run(
        tmp_path,
        f"--checkpoint={c4_path}",
        "--attack_params=alpha=0.9",
        "--num_images=8",
        "--max_binary_steps=1",
        "--iteration_counts=100",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    result = json.loads((tmp_path / "out/protocol_sweep/fashion_mnist-c4/protocol_sweep.json").read_text())
    assert result["overrides"] == {"alpha": 0.9}
    measured = sorted((r["attack"], r["best_iterate"]) for r in result["rows"])
    assert measured == sorted(
        (a, rule) for a in ("carlini_wagner_l2", "smooth_carlini_wagner_l2") for rule in ("margin", "misclassified")
    )
    assert all(0 < r["p_suc"] <= 1 for r in result["rows"])


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--attack_params=iterations=20"], "--attack_params: iterations: the sweep sets it"),
        (["--attack_params=alpha=0.9,binary_search_steps=2"], "--attack_params: binary_search_steps: the sweep"),
        (["--protocol=strong"], "--protocol: not used here"),
        (["--num_shards=2", "--shard_index=1"], "--num_shards, --shard_index: not used here"),
        (["--attack_params=epsilon=1"], "--attack_params: epsilon: none of the selected attacks"),
    ],
)
def test_bad_overrides_and_ignored_flags_are_refused(tmp_path, c4_path, args, fragment):
    # otherwise a small valid sweep: without the refusal it would run (and write) in seconds
    small = [f"--checkpoint={c4_path}", "--num_images=2", "--max_binary_steps=1", "--iteration_counts=100"]
    done = run(tmp_path, *small, *args)
    assert_refused(done, "protocol_sweep.py", fragment)
    assert os.listdir(tmp_path) == []
