"""merge_results.py merges shard records INTO a folder's records: nothing recorded before is lost, and shards
that are not one run over every shard, records of another run or conflicting duplicates are refused (exit 2, one
line, nothing written). Driven through the scripts on real Fashion-MNIST with a real C4, as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from smoothadv_tf import evaluation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = "white_box/fashion_mnist-c4/paper"
SHARDS = ("records-shard0000-of-0002.jsonl", "records-shard0001-of-0002.jsonl")


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")}
    env = {**env, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    cmd = [sys.executable, os.path.join(ROOT, "scripts", script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def refused(done: subprocess.CompletedProcess, script: str, *fragments: str) -> None:
    ours = [ln for ln in done.stderr.splitlines() if ln.startswith(f"{script}: error:")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(ours) == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in ours[0], ours[0]
    assert "Traceback" not in done.stderr


def tree(path) -> dict:
    """Every file under `path` (lock files aside) with its bytes."""
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            if not name.endswith(".lock"):
                full = os.path.join(folder, name)
                out[os.path.relpath(full, path)] = open(full, "rb").read()
    return out


def white_box(out, c4_path, *args):
    return ok(run_script("white_box.py", f"--checkpoint={c4_path}", f"--output_dir={out}", *args))


PGD2 = ["--attacks=pgd2", "--attack_params=iterations=2"]


def pgd2_shards(out, c4_path, num_images):
    for index in (0, 1):
        white_box(out, c4_path, *PGD2, f"--num_images={num_images}", "--num_shards=2", f"--shard_index={index}")


def counts(folder) -> Counter:
    return Counter(r["attack"] for r in evaluation.read_records(str(folder / "records.jsonl")))


@pytest.fixture(scope="module")
def before_merge(c4_path, tmp_path_factory):
    """A folder a user extends: FGSM on 20 images unsharded, then PGD₂ on the same 20 in two shards, not merged."""
    out = tmp_path_factory.mktemp("merge") / "out"
    white_box(out, c4_path, "--attacks=fgsm", "--num_images=20")
    pgd2_shards(out, c4_path, 20)
    return out


def copy(before_merge, tmp_path):
    shutil.copytree(before_merge, tmp_path / "out")
    return tmp_path / "out" / FOLDER


@pytest.mark.slow
def test_merge_keeps_earlier_records_and_a_later_resume(before_merge, tmp_path, c4_path):
    folder = copy(before_merge, tmp_path)
    fgsm_lines = (folder / "records.jsonl").read_bytes()
    assert counts(folder) == {"clean": 20, "fgsm": 120}
    ok(run_script("merge_results.py", f"--results_dir={folder}"))
    assert counts(folder) == {"clean": 20, "fgsm": 120, "pgd2": 120}
    assert (folder / "records.jsonl").read_bytes().startswith(fgsm_lines)  # earlier records kept, unchanged
    assert not any((folder / name).exists() for name in SHARDS)  # merged: every record is in records.jsonl
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["attacks"]) == {"fgsm", "pgd2"} and summary["images"] == 20

    # an unsharded resume appends to the merged file; a later sharded run (recomputing PGD₂ on images 0..19 in
    # other batches) merges over it: the resume's records survive, duplicates agree and are kept once
    white_box(tmp_path / "out", c4_path, "--attacks=fgsm", "--num_images=30")
    resumed = (folder / "records.jsonl").read_bytes()
    assert counts(folder) == {"clean": 30, "fgsm": 180, "pgd2": 120}
    pgd2_shards(tmp_path / "out", c4_path, 30)
    ok(run_script("merge_results.py", f"--results_dir={folder}"))
    assert (folder / "records.jsonl").read_bytes().startswith(resumed)
    assert counts(folder) == {"clean": 30, "fgsm": 180, "pgd2": 180}
    keys = [evaluation.record_key(r) for r in evaluation.read_records(str(folder / "records.jsonl"))]
    assert len(keys) == len(set(keys))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["images"] == 30 and {r["images"] for r in summary["attacks"].values()} == {summary["correct"]}


def edit_shard(folder, index, keep=lambda r: True, change=lambda r: r):
    path = folder / SHARDS[index]
    records = [change(dict(r)) for r in evaluation.read_records(str(path)) if keep(r)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.slow
def test_merge_refuses_shards_of_other_attacks_or_images(before_merge, tmp_path):
    folder = copy(before_merge, tmp_path)
    # shard 1 as if run with --num_images=10: images 1, 3, ..., 9 only
    ids = sorted({r["image_id"] for r in evaluation.read_records(str(folder / SHARDS[1]))})
    edit_shard(folder, 1, keep=lambda r: r["image_id"] in ids[:5])
    before = tree(folder)
    done = run_script("merge_results.py", f"--results_dir={folder}")
    refused(done, "merge_results.py", "the shards hold clean records of [10, 5] images, not one --num_images")
    assert tree(folder) == before

    # shard 1 as if run without PGD₂ (another --attacks)
    shutil.rmtree(tmp_path / "out")
    folder = copy(before_merge, tmp_path)
    edit_shard(folder, 1, keep=lambda r: r["attack"] != "pgd2")
    before = tree(folder)
    done = run_script("merge_results.py", f"--results_dir={folder}")
    refused(done, "merge_results.py", "the shards hold pgd2 (target 1.0) records of [10, 0] images")
    assert tree(folder) == before

    # shard 0 stopped before its last ε runs on some images
    shutil.rmtree(tmp_path / "out")
    folder = copy(before_merge, tmp_path)
    first = sorted({r["image_id"] for r in evaluation.read_records(str(folder / SHARDS[0]))})[0]
    edit_shard(folder, 0, keep=lambda r: not (r["image_id"] == first and r.get("target") == 6.0))
    before = tree(folder)
    done = run_script("merge_results.py", f"--results_dir={folder}")
    refused(done, "merge_results.py", f"shard 0 has pgd2 records of 1 image(s) without target 6.0 (e.g. {first})")
    assert tree(folder) == before


@pytest.mark.slow
def test_merge_refuses_conflicts_and_other_runs(before_merge, tmp_path):
    folder = copy(before_merge, tmp_path)
    # a shard record of a key records.jsonl holds already, with another outcome
    image = sorted({r["image_id"] for r in evaluation.read_records(str(folder / SHARDS[0]))})[0]

    def flip(r):
        return {**r, "correct": not r["correct"]} if r["attack"] == "clean" and r["image_id"] == image else r

    edit_shard(folder, 0, change=flip)
    before = tree(folder)
    done = run_script("merge_results.py", f"--results_dir={folder}")
    refused(done, "merge_results.py", f"{SHARDS[0]}: record ('self', '{image}', 'clean', None) differs", "correct")
    assert tree(folder) == before

    # a shard copied from another run's folder
    shutil.rmtree(tmp_path / "out")
    folder = copy(before_merge, tmp_path)
    edit_shard(folder, 1, change=lambda r: {**r, "run_id": "0123456789ab"})
    before = tree(folder)
    done = run_script("merge_results.py", f"--results_dir={folder}")
    refused(done, "merge_results.py", f"{SHARDS[1]}: records of run 0123456789ab", "run.json is run")
    assert tree(folder) == before


def test_record_conflict_ignores_wall_clock_and_float_rounding():
    a = {"image_id": "i", "attack": "pgd2", "target": 1.0, "success": True, "distortion": 0.8, "seconds": 0.1}
    assert evaluation.record_conflict(a, {**a, "seconds": 0.3, "distortion": 0.8 * (1 + 1e-6)}) is None
    assert evaluation.record_conflict(a, {**a, "distortion": 0.81}) == "distortion 0.8 vs 0.81"
    assert evaluation.record_conflict(a, {**a, "success": False}) == "success True vs False"
    assert evaluation.record_conflict(a, {**a, "iterations": 3}) is None  # a field only one carries
    assert evaluation.record_conflict({**a, "prediction": 1}, {**a, "prediction": True}) is not None


def test_shard_coverage_matches_shard_indices():
    """Every split shard_indices makes is accepted; one image fewer in a shard is refused, unless that shard
    owns the last image (then the shards are exactly the split of --num_images one lower)."""
    for num_images in range(1, 12):
        for num_shards in (1, 2, 3, 5):
            shards = [
                [{"image_id": str(i), "attack": a, "target": None} for i in idx for a in ("clean", "carlini_wagner_l2")]
                for idx in (evaluation.shard_indices(num_images, num_shards, k) for k in range(num_shards))
            ]
            assert evaluation.shard_coverage_problem(shards) is None
            for k, shard in enumerate(shards):
                if shard and k != (num_images - 1) % num_shards:
                    short = [r for r in shard if r["image_id"] != shard[0]["image_id"]]
                    assert evaluation.shard_coverage_problem([*shards[:k], short, *shards[k + 1 :]]) is not None
                    assert evaluation.shard_coverage_problem([*shards[:k], shard[1:], *shards[k + 1 :]]) is not None
