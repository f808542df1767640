"""The §5.1 protocol on crafted records, and the experiment scripts end to end: resume after a kill, shards."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest
from conftest import assert_refused, run_script

from smoothadv_tf import evaluation, presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rec(image_id, attack, success=None, d=None, target=None, correct=True):
    if attack == "clean":
        return {"image_id": image_id, "attack": "clean", "target": None, "correct": correct}
    return {"image_id": image_id, "attack": attack, "target": target, "success": success, "distortion": d}


def test_protocol_statistics():
    records = [rec(i, "clean", correct=i != "d") for i in "abcd"]
    # PGD₂ swept over two targets: success if any run succeeds, D = the minimum over successful runs
    records += [
        rec("a", "pgd2", True, 3.0, 3.0),
        rec("a", "pgd2", True, 2.0, 2.0),
        rec("b", "pgd2", False, 1.0, 1.0),
        rec("b", "pgd2", True, 4.0, 4.0),
        rec("c", "pgd2", False, 1.0, 1.0),
        rec("c", "pgd2", False, 5.0, 5.0),
        rec("d", "pgd2", True, 0.1, 1.0),
    ]  # misclassified image: not counted
    records += [
        rec("a", "carlini_wagner_l2", True, 1.5),
        rec("b", "carlini_wagner_l2", False, 0.0),
        rec("c", "carlini_wagner_l2", True, 2.5),
    ]
    s = evaluation.summarize(records)
    assert (s["images"], s["correct"], s["accuracy"]) == (4, 3, 0.75)
    assert s["attacks"]["pgd2"]["p_suc"] == pytest.approx(2 / 3)
    assert s["attacks"]["pgd2"]["mean_distortion"] == pytest.approx(3.0)  # (2 + 4) / 2, conditional on success
    assert s["attacks"]["carlini_wagner_l2"]["mean_distortion"] == pytest.approx(2.0)
    outcomes = evaluation.per_image_outcomes(records)["pgd2"]
    p = evaluation.operating_characteristic(list(outcomes.values()), np.array([0.0, 2.0, 3.9, 4.0, 10.0]))
    np.testing.assert_allclose(p, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])  # eq. (21): up to P_suc


def test_summary_perceptibility_is_over_the_d_bar_records_and_tolerates_old_records(tmp_path):
    """mean SSIM / PSNR / smoothness are over the same least-distortion successes as D̄; records of an older
    version (without the fields) are left out and counted, all-old gives NaN and n/a, never a crash."""
    import csv

    def attack(image_id, name, success, d, target, ssim, psnr, smooth, seconds=None):
        r = {**rec(image_id, name, success, d, target), "ssim": ssim, "psnr": psnr, "smoothness": smooth}
        return r if seconds is None else {**r, "seconds": seconds}

    records = [rec(i, "clean") for i in "abc"]
    records += [
        # time per image sums the ε runs: a 0.03 s, b 0.07 s, c 0.05 s (failed images took time too)
        attack("a", "pgd2", True, 3.0, 3.0, 0.5, 20.0, 0.4, 0.01),
        attack("a", "pgd2", True, 2.0, 2.0, 0.7, 30.0, 0.2, 0.02),  # the one D̄ takes for a
        attack("b", "pgd2", False, 1.0, 1.0, 0.99, None, 0.0, 0.03),  # failed (identical: psnr null): not in D̄
        attack("b", "pgd2", True, 4.0, 4.0, 0.3, 10.0, 0.6, 0.04),
        attack("c", "pgd2", False, 5.0, 5.0, 0.1, 5.0, 0.9, 0.05),
        {**attack("c", "pgd2", True, 1.0, 5.0, 0.1, 5.0, 0.9, 9.0), "evaluated_on": "other"},  # another judge
        # FGSM: b's success comes from an older version (no ssim / psnr, but smoothness)
        attack("a", "fgsm", True, 1.0, 0.1, 0.8, 40.0, 0.5),
        {k: v for k, v in attack("b", "fgsm", True, 3.0, 0.1, 0, 0, 0.7).items() if k not in ("ssim", "psnr")},
        # C&W: all records from an older version
        rec("a", "carlini_wagner_l2", True, 1.5),
        rec("b", "carlini_wagner_l2", False, 0.0),
        # I-FGSM: no success at all; a's runs are partly timed (an older run resumed by this version): left out
        attack("a", "ifgsm", False, 1.0, 0.1, 0.9, 35.0, 0.1),
        attack("a", "ifgsm", False, 1.0, 0.2, 0.9, 35.0, 0.1, 0.1),
        attack("b", "ifgsm", False, 1.0, 0.1, 0.9, 35.0, 0.1, 0.2),
    ]
    rows = evaluation.summarize(records)["attacks"]
    pgd2 = rows["pgd2"]
    assert pgd2["mean_distortion"] == pytest.approx(3.0)  # (2 + 4) / 2
    assert (pgd2["mean_ssim"], pgd2["mean_psnr"], pgd2["mean_smoothness"]) == pytest.approx((0.5, 20.0, 0.4))
    assert (pgd2["n_ssim"], pgd2["n_psnr"], pgd2["n_smoothness"]) == (2, 2, 2) == (pgd2["successes"],) * 3
    assert (pgd2["ms_per_image"], pgd2["n_timed"], pgd2["n_untimed"]) == (pytest.approx(50.0), 3, 0)
    fgsm = rows["fgsm"]
    assert (fgsm["successes"], fgsm["n_ssim"], fgsm["n_psnr"], fgsm["n_smoothness"]) == (2, 1, 1, 2)
    assert (fgsm["mean_ssim"], fgsm["mean_psnr"], fgsm["mean_smoothness"]) == pytest.approx((0.8, 40.0, 0.6))
    cw = rows["carlini_wagner_l2"]
    assert cw["successes"] == 1 and cw["mean_distortion"] == 1.5
    assert all(np.isnan(cw[f"mean_{f}"]) and cw[f"n_{f}"] == 0 for f in ("ssim", "psnr", "smoothness"))
    assert np.isnan(cw["ms_per_image"]) and cw["n_timed"] == 0
    assert rows["ifgsm"]["successes"] == 0 and np.isnan(rows["ifgsm"]["mean_ssim"])
    ifgsm = rows["ifgsm"]
    assert (ifgsm["ms_per_image"], ifgsm["n_timed"], ifgsm["n_untimed"]) == (pytest.approx(200.0), 1, 1)

    table = evaluation.write_summary(evaluation.summarize(records), str(tmp_path), "test")
    lines = table.splitlines()
    assert "| attack | P_suc | D̄ | successes / N | SSIM | PSNR (dB) | smoothness | ms/image |" in lines
    assert "| FGSM | 1.000 | 2.000 | 2/2 | 0.800 (1/2) | 40.00 (1/2) | 0.600 | n/a |" in lines
    assert "| PGD2 | 0.667 | 3.000 | 2/3 | 0.500 | 20.00 | 0.400 | 50.0 |" in lines
    assert "| C&W | 0.500 | 1.500 | 1/2 | n/a | n/a | n/a | n/a |" in lines
    assert "| I-FGSM | 0.000 | nan | 0/2 | n/a | n/a | n/a | 200.0 (1/2) |" in lines
    assert any("older version" in line for line in lines)
    with open(tmp_path / "table.csv") as f:
        table_csv = list(csv.DictReader(f))
    header = list(table_csv[0])
    assert header[:6] == ["attack", "p_suc", "mean_distortion", "successes", "images", "accuracy"]  # as before
    by_name = {r["attack"]: r for r in table_csv}
    assert by_name["FGSM"]["mean_ssim"] == "0.8000" and by_name["FGSM"]["n_ssim"] == "1"
    assert by_name["C&W"]["mean_psnr"] == "nan" and by_name["C&W"]["n_psnr"] == "0"
    assert (by_name["PGD2"]["ms_per_image"], by_name["PGD2"]["n_timed"]) == ("50.0", "3")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["attacks"]["pgd2"]["mean_psnr"] == 20.0 and np.isnan(
        summary["attacks"]["carlini_wagner_l2"]["mean_ssim"]
    )

    # records of an older version only: the table as before, with n/a
    old = [{k: v for k, v in r.items() if k not in ("ssim", "psnr", "smoothness", "seconds")} for r in records]
    table = evaluation.write_summary(evaluation.summarize(old), str(tmp_path), "old")
    assert "| PGD2 | 0.667 | 3.000 | 2/3 | n/a | n/a | n/a | n/a |" in table.splitlines()


def test_run_experiment_records_perceptibility_of_the_judged_images(tmp_path, fashion_test, c4_model):
    """In process, FGSM on 20 real Fashion-MNIST images: each record's ssim / psnr are those of the saved 8-bit
    image (what was judged) against the original, recomputed with scikit-image; the summary means are over the
    records D̄ uses."""
    from PIL import Image
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from smoothadv_tf import perceptibility

    # the first 19 images and one the model misclassifies (not attacked: the judged image is the original)
    predicted = np.argmax(c4_model(fashion_test.images[:200]).numpy(), -1)
    wrong = int(np.flatnonzero(predicted != fashion_test.labels[:200])[0])
    indices = np.array(sorted(set(range(19)) | {wrong}))
    path = str(tmp_path / "records.jsonl")
    start = time.perf_counter()
    with evaluation.RecordStore(path) as store:
        evaluation.run_experiment(
            c4_model, fashion_test, ["fgsm"], "mnist", store, indices, batch_size=20,
            save_images_dir=str(tmp_path / "images"), progress=False,
        )  # fmt: skip
    elapsed = time.perf_counter() - start
    records = evaluation.read_records(path)
    attacked = [r for r in records if r["attack"] == "fgsm"]
    assert len(attacked) == len(indices) * 6  # six ε runs
    size, sigma = perceptibility.ssim_window(28, 28)
    identical = 0
    for r in attacked:
        original, judged = (
            np.asarray(Image.open(tmp_path / "images" / folder / f"{r['image_id']}.png"), np.float64) / 255
            for folder in ("original", f"fgsm-{r['target']:g}")
        )
        expected = structural_similarity(
            original, judged, win_size=size, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
            data_range=1.0,
        )  # fmt: skip
        assert abs(r["ssim"] - expected) < 1e-4, r
        if np.array_equal(judged, original):  # not attacked (misclassified): the original itself
            identical += 1
            assert r["psnr"] is None and not r["success"], r
        else:
            assert r["psnr"] == pytest.approx(peak_signal_noise_ratio(original, judged, data_range=1.0), abs=1e-4)
    misclassified = sum(not r["correct"] for r in records if r["attack"] == "clean")
    assert identical == 6 * misclassified > 0 and any(r["success"] for r in attacked)
    row = evaluation.summarize(records)["attacks"]["fgsm"]
    best = [r for r in evaluation.best_records(records)["fgsm"].values() if r is not None]
    assert row["successes"] == row["n_ssim"] == row["n_psnr"] == row["n_smoothness"] == len(best) > 0
    for field in ("ssim", "psnr", "smoothness"):
        assert row[f"mean_{field}"] == pytest.approx(np.mean([r[field] for r in best]), rel=1e-12)
    assert 0 < row["mean_ssim"] < 1 and np.isfinite(row["mean_psnr"])
    # one batch per ε run: its time shared by the images; ms/image sums the six runs
    per_run = defaultdict(set)
    for r in attacked:
        per_run[r["target"]].add(r["seconds"])
    assert all(len(v) == 1 and next(iter(v)) > 0 for v in per_run.values()) and len(per_run) == 6
    assert (row["n_timed"], row["n_untimed"]) == (len(indices), 0)  # the misclassified image's call too
    assert row["ms_per_image"] == pytest.approx(1000 * sum(next(iter(v)) for v in per_run.values()))
    assert 0 < row["ms_per_image"] * len(indices) / 1000 <= elapsed  # the attack calls, within the whole run


def test_shards_partition_the_images():
    parts = [evaluation.shard_indices(103, 4, k) for k in range(4)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    with pytest.raises(ValueError, match="shard_index"):
        evaluation.shard_indices(10, 2, 2)


def test_truncated_last_line_is_dropped_but_corruption_elsewhere_is_an_error(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(rec("a", "clean")) + "\n" + '{"image_id": "b", "att')
    assert len(evaluation.read_records(str(path))) == 1
    path.write_text('{"broken\n' + json.dumps(rec("a", "clean")) + "\n")
    with pytest.raises(evaluation.RecordsError, match="line 1 is not a JSON record"):
        evaluation.read_records(str(path))
    path.write_text(json.dumps(rec("a", "clean")) + "\n[1, 2]\n")
    with pytest.raises(evaluation.RecordsError, match="line 2 is not a record"):
        evaluation.read_records(str(path))


def test_records_survive_a_kill_at_every_byte_of_a_write(tmp_path):
    """A write cut at any byte loses only records of that batch; the store repairs the file (the dropped byte
    count is the unterminated tail), the resumed append never glues onto a fragment, and any number of
    later opens read every record exactly once."""
    path = str(tmp_path / "records.jsonl")
    first = [rec(i, "clean") for i in "abc"]
    batch = [rec(i, "fgsm", True, 0.5 + k, 0.3) for k, i in enumerate("abc")]
    lines = [(json.dumps(r) + "\n").encode() for r in batch]
    written = b"".join(lines)
    with evaluation.RecordStore(path) as store:
        store.append(first)
    head = open(path, "rb").read()
    for cut in range(len(written) + 1):
        with open(path, "wb") as f:
            f.write(head + written[:cut])
        complete = sum(cut >= len(b"".join(lines[: k + 1])) for k in range(len(lines)))
        tail = cut - len(b"".join(lines[:complete]))
        copy = str(tmp_path / "copy.jsonl")
        shutil.copy(path, copy)
        assert evaluation.repair_records(copy) == tail and evaluation.repair_records(copy) == 0
        with evaluation.RecordStore(path) as store:  # the resume (repairs the file itself)
            assert store.records == first + batch[:complete]
            store.append(batch)  # the batch in flight is redone; what was recorded is not written twice
        for _ in range(2):  # later resumes
            with evaluation.RecordStore(path) as store:
                assert store.records == first + batch
        assert open(path, "rb").read() == head + written


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    import socket

    path = str(tmp_path / "records.jsonl")
    holder = evaluation.RecordStore(path)
    holder.append([rec("a", "clean")])
    with pytest.raises(
        evaluation.RecordsError, match=f"being written by process {os.getpid()} on host {socket.gethostname()}"
    ):
        evaluation.RecordStore(path)
    reader = evaluation.RecordStore(path, writer=False)  # reading needs no lock
    assert reader.records == [rec("a", "clean")]
    with pytest.raises(evaluation.RecordsError, match="read-only"):
        reader.append([rec("b", "clean")])
    holder.close()
    with evaluation.RecordStore(path) as again:  # released
        again.append([rec("a", "clean"), rec("b", "clean"), rec("b", "clean")])
        assert [r["image_id"] for r in again.records] == ["a", "b"]  # known and repeated keys written once
    assert len(evaluation.read_records(path)) == 2


def assert_same_summary(a: dict, b: dict) -> None:
    """Two summaries of the same run computed over different batch compositions (a resume, shards). TF does
    not promise bit-identical kernels across batch sizes, so distortions are compared to 1e-4 relative; the
    clean and attack decisions (counts) must be the same — they could differ only if a value landed within
    float rounding of a decision threshold."""
    assert {k: a[k] for k in ("images", "correct", "accuracy")} == {k: b[k] for k in ("images", "correct", "accuracy")}
    assert list(a["attacks"]) == list(b["attacks"])
    for attack, row in a["attacks"].items():
        other = b["attacks"][attack]
        assert (row["images"], row["successes"]) == (other["images"], other["successes"]), attack
        assert row["mean_distortion"] == pytest.approx(other["mean_distortion"], rel=1e-4), attack


def _script(name, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")}
    env = {**env, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    return [sys.executable, os.path.join(ROOT, "scripts", name), *args], env


COMMON = [
    "--dataset=fashion_mnist",
    "--model=c4",
    "--attacks=fgsm,pgd2,carlini_wagner_l2",
    "--num_images=60",
    "--batch_size=10",
]


@pytest.mark.slow
def test_white_box_resumes_after_kill_and_shards_merge(tmp_path, c4_path):
    common = COMMON + [f"--checkpoint={c4_path}"]
    # 1. uninterrupted
    cmd, env = _script("white_box.py", *common, f"--output_dir={tmp_path}/full")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    full_dir = tmp_path / "full/white_box/fashion_mnist-c4/paper"
    full = json.loads((full_dir / "summary.json").read_text())
    assert full["images"] == 60 and set(full["attacks"]) == {"fgsm", "pgd2", "carlini_wagner_l2"}
    for name in ("table.md", "table.csv", "operating_characteristic.png"):
        assert (full_dir / name).stat().st_size > 0

    # 2. SIGKILLed three times at random points (once a random number of lines is recorded, polled every 10 ms:
    # mostly between writes; a kill inside a write is covered byte by byte in
    # test_records_survive_a_kill_at_every_byte_of_a_write), resumed each time with the same command. The
    # resumed run ends with the same table as the uninterrupted one, every record once; a killed run's
    # writer lock never blocks the resume.
    cmd, env = _script("white_box.py", *common, f"--output_dir={tmp_path}/killed")
    records = tmp_path / "killed/white_box/fashion_mnist-c4/paper/records.jsonl"
    total = 60 * (1 + 6 + 6 + 1)
    seed = int(time.time())
    kills = sorted(np.random.default_rng(seed).integers(lo, lo + 150) for lo in (40, 300, 560))
    print(f"kill points {kills} (seed {seed})")
    for threshold in kills:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if records.exists() and records.read_bytes().count(b"\n") >= threshold:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run finished before it could be killed (kills at {kills}, seed {seed})"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert threshold <= records.read_bytes().count(b"\n") < total, (kills, seed)
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    resumed = json.loads((records.parent / "summary.json").read_text())
    assert_same_summary(resumed, full)
    keys = [evaluation.record_key(r) for r in evaluation.read_records(str(records))]
    assert len(keys) == len(set(keys)) == total  # nothing recorded twice, nothing missing
    assert records.read_bytes().endswith(b"\n")

    # 3. two shards taking their index from the scheduler (docs/cluster.md: a Kubernetes Indexed Job, a Slurm
    # array), merged, give the same table; a shard run again (a scheduler's retry) is a no-op
    sharded = tmp_path / "sharded/white_box/fashion_mnist-c4/paper"
    schedulers = [{"JOB_COMPLETION_INDEX": "0"}, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1"}]
    shards = []
    for scheduler in schedulers + schedulers[1:]:
        cmd, env = _script("white_box.py", *common, f"--output_dir={tmp_path}/sharded", "--num_shards=2")
        subprocess.run(cmd, env={**env, **scheduler}, check=True, capture_output=True, timeout=600)
        shards.append({p.name: p.read_bytes() for p in sharded.glob("records-shard*.jsonl")})
    assert list(shards[0]) == ["records-shard0000-of-0002.jsonl"]
    assert sorted(shards[1]) == ["records-shard0000-of-0002.jsonl", "records-shard0001-of-0002.jsonl"]
    assert shards[2] == shards[1]  # the retry recorded nothing new
    cmd, env = _script("merge_results.py", f"--results_dir={tmp_path}/sharded/white_box/fashion_mnist-c4/paper")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    merged = json.loads((tmp_path / "sharded/white_box/fashion_mnist-c4/paper/summary.json").read_text())
    assert_same_summary(merged, full)


@pytest.mark.slow
def test_transfer_script_judges_on_both_targets(tmp_path, c4_path):
    cmd, env = _script(
        "transfer.py",
        "--dataset=fashion_mnist",
        "--model=c4",
        f"--checkpoint={c4_path}",
        f"--target_checkpoint={c4_path}",
        "--attacks=fgsm,pgd2",
        "--num_images=30",
        "--batch_size=30",
        f"--output_dir={tmp_path}",
    )
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "transfer/fashion_mnist-c4/paper"
    bilateral = json.loads((out / "bilateral/summary.json").read_text())
    same = json.loads((out / "adversarially_trained/summary.json").read_text())
    # The "adversarially trained" target here is the source itself: transfer = white box, single run at ε = 5.
    records = evaluation.read_records(str(out / "records.jsonl"))
    assert {r["target"] for r in records if r["attack"] == "pgd2"} == {5.0}
    assert same["attacks"]["pgd2"]["p_suc"] > 0.9
    # A bilateral filter (σ_d 0.5, radius 5) in front changes the classifier a little, not completely.
    assert 0.5 < bilateral["accuracy"] <= 1.0 and bilateral["images"] == 30


def test_claim_run_resumes_extends_and_refuses(tmp_path):
    """run.json through a JSON round trip: the same identity resumes (same id), another attack extends it,
    a changed parameter is refused and leaves run.json as it was."""
    from smoothadv_tf import attacks as attacks_lib
    from smoothadv_tf import experiment
    from smoothadv_tf.errors import ConfigError

    identity = {
        "experiment": "white_box",
        "dataset": "fashion_mnist",
        "data": "0123",
        "model": "c4",
        "weights": "abc",
        "seed": 0,
        "protocol": "paper",
        "attacks": {"carlini_wagner_l2": [attacks_lib.preset("mnist", "carlini_wagner_l2")]},
    }
    first = experiment.claim_run(str(tmp_path), identity)
    assert experiment.claim_run(str(tmp_path), identity) == first
    more = {**identity, "attacks": {"pgd2": evaluation.attack_runs("pgd2", "mnist")}}
    assert experiment.claim_run(str(tmp_path), more) == first
    recorded = json.loads((tmp_path / "run.json").read_text())
    assert set(recorded["attacks"]) == {"carlini_wagner_l2", "pgd2"}
    changed = {**identity, "attacks": {"pgd2": evaluation.attack_runs("pgd2", "mnist", overrides={"step": 1.0})}}
    with pytest.raises(ConfigError, match=r"pgd2 parameters \['step'\]"):
        experiment.claim_run(str(tmp_path), changed)
    assert json.loads((tmp_path / "run.json").read_text()) == recorded
    (tmp_path / "run.json").write_text('{"model": "c4"}')  # from another version, or damaged
    with pytest.raises(evaluation.RecordsError, match="not a run identity of this version"):
        experiment.claim_run(str(tmp_path), identity)


def test_run_identity_differences_name_what_changed():
    from smoothadv_tf import experiment

    base = {
        "model": "c4",
        "weights": "abc",
        "protocol": "paper",
        "attacks": {"fgsm": [{"epsilon": 0.1}, {"epsilon": 0.2}], "carlini_wagner_l2": [{"iterations": 20}]},
    }
    assert experiment.identity_differences(base, base) == []
    # another attack, or fewer attacks, extend the run; anything else is a different run
    assert experiment.identity_differences(base, {**base, "attacks": {"pgd2": [{"epsilon": 1.0}]}}) == []
    changed = {**base, "weights": "abd", "attacks": {"carlini_wagner_l2": [{"iterations": 100}]}}
    diffs = experiment.identity_differences(base, changed)
    assert diffs == ["weights: recorded 'abc', now 'abd'", "carlini_wagner_l2 parameters ['iterations']"]
    fewer = {**base, "attacks": {"fgsm": [{"epsilon": 0.1}]}}
    assert experiment.identity_differences(base, fewer) == ["fgsm parameters ['number of target runs']"]
    assert experiment.run_id(base) != experiment.run_id({**base, "protocol": "strong"})
    assert experiment.run_id(base) == experiment.run_id({**base, "attacks": {}})


@pytest.mark.slow
def test_a_resume_never_mixes_runs(tmp_path, c4_path):
    """Protocols go to their own folders; changed parameters are refused with what differs (exit 2, one line,
    nothing written); another attack extends the run; every record carries the protocol and the run id."""
    common = ["--dataset=fashion_mnist", "--model=c4", f"--checkpoint={c4_path}", "--num_images=20", "--batch_size=20"]
    out = [f"--output_dir={tmp_path}"]
    cmd, env = _script("white_box.py", *common, *out, "--attacks=fgsm")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    paper_dir = tmp_path / "white_box/fashion_mnist-c4/paper"
    before = (paper_dir / "records.jsonl").read_text()

    done = run_script("white_box.py", *common, *out, "--attacks=fgsm", "--attack_params=epsilon=0.1")
    assert_refused(done, "white_box.py", "fgsm parameters ['epsilon']")  # one line, TensorFlow loud
    assert (paper_dir / "records.jsonl").read_text() == before

    cmd, env = _script(
        "white_box.py", *common, *out, "--attacks=fgsm,carlini_wagner_l2", "--attack_params=iterations=5"
    )
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    cmd, env = _script(
        "white_box.py",
        *common,
        *out,
        "--protocol=strong",
        "--attacks=carlini_wagner_l2",
        "--attack_params=iterations=5",
    )
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    for protocol, attacks_run in (("paper", {"fgsm", "carlini_wagner_l2"}), ("strong", {"carlini_wagner_l2"})):
        folder = tmp_path / "white_box/fashion_mnist-c4" / protocol
        records = evaluation.read_records(str(folder / "records.jsonl"))
        identity = json.loads((folder / "run.json").read_text())
        assert identity["protocol"] == protocol and set(identity["attacks"]) == attacks_run
        assert {r["protocol"] for r in records} == {protocol}
        assert len({r["run_id"] for r in records}) == 1
        assert {r["attack"] for r in records} == attacks_run | {"clean"}
    strong_cw = json.loads((tmp_path / "white_box/fashion_mnist-c4/strong/run.json").read_text())["attacks"]
    assert strong_cw["carlini_wagner_l2"][0]["binary_search_steps"] == 5


def test_cluster_files_run_as_many_tasks_as_shards():
    """docs/cluster: the Slurm array and the Kubernetes Indexed Job each start --num_shards tasks."""
    import re

    slurm = open(os.path.join(ROOT, "docs/cluster/white_box.slurm")).read()
    first, last = map(int, re.search(r"#SBATCH --array=(\d+)-(\d+)", slurm).groups())
    assert last - first + 1 == int(re.search(r"NUM_SHARDS=(\d+)", slurm).group(1))
    job = open(os.path.join(ROOT, "docs/cluster/white_box-job.yaml")).read()
    completions = int(re.search(r"completions: (\d+)", job).group(1))
    assert "completionMode: Indexed" in job and f"--num_shards={completions}" in job
    merge = open(os.path.join(ROOT, "docs/cluster/merge-job.yaml")).read()
    assert "--results_dir=/work/results/white_box/nips17-inception_v3/paper" in merge


def test_magnify_script_shows_the_runs_the_records_kept(tmp_path):
    """scripts/magnify.py picks, per attack, the ε run the §5.1 rule kept for the image (least-distortion
    success, else the largest ε), captions it with the recorded D and outcome, and refuses images and records
    that disagree."""
    import importlib.util

    from absl import app

    spec = importlib.util.spec_from_file_location("magnify_script", os.path.join(ROOT, "scripts", "magnify.py"))
    magnify_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(magnify_script)
    images = tmp_path / "images"
    for folder in ("original", "fgsm-0.1", "fgsm-0.2", "fgsm-0.3", "carlini_wagner_l2", "pgd2-1"):
        (images / folder).mkdir(parents=True)
        (images / folder / "i0.png").write_bytes(b"")
    records = [
        rec("i0", "clean"),
        rec("i0", "fgsm", False, 0.5, 0.1),
        rec("i0", "fgsm", True, 1.5, 0.3),
        rec("i0", "fgsm", True, 1.0, 0.2),
        rec("i0", "carlini_wagner_l2", False, 0.25),
    ]
    records[3]["ssim"] = 0.9876  # a record of a run that measured SSIM: shown; an older one: D only
    shown = magnify_script.attack_runs_to_show(str(images), "i0", records)
    assert shown == [
        ("fgsm-0.2", "FGSM\nD=1.00, SSIM=0.988, success"),
        ("carlini_wagner_l2", "C&W\nD=0.25, failure"),
    ]
    (images / "fgsm-0.2" / "i0.png").unlink()
    with pytest.raises(app.UsageError, match="fgsm-0.2/i0.png missing"):
        magnify_script.attack_runs_to_show(str(images), "i0", records)


def test_compare_protocols_puts_both_runs_side_by_side(tmp_path):
    """compare_protocols.py on crafted records of two runs that differ only in the protocol: each protocol's
    P_suc, D̄, SSIM, smoothness and ms/image come from its own records; attacks the protocol does not change
    read "as paper"; a column older records lack reads n/a."""
    identity = {
        "experiment": "white_box", "dataset": "fashion_mnist", "model": "c4", "weights": "w", "data": "d",
        "attacks": {}, "preset": "mnist", "seed": 0,
    }  # fmt: skip

    def attack(image_id, name, d, ssim, smooth, seconds):
        return {**rec(image_id, name, True, d), "ssim": ssim, "psnr": 30.0, "smoothness": smooth, "seconds": seconds}

    runs = {
        "paper": [rec("a", "clean"), rec("b", "clean"), attack("a", "carlini_wagner_l2", 2.0, 0.9, 0.4, 0.1)]
        + [attack("b", "carlini_wagner_l2", 1.0, 0.7, 0.2, 0.1), rec("a", "pgd2", True, 3.0, 3.0)]
        + [rec("b", "pgd2", False, 6.0, 6.0)],
        "strong": [rec("a", "clean"), rec("b", "clean"), attack("a", "carlini_wagner_l2", 1.0, 0.95, 0.3, 0.5)]
        + [attack("b", "carlini_wagner_l2", 0.5, 0.97, 0.1, 0.7)],
    }
    for protocol, records in runs.items():
        (tmp_path / protocol).mkdir()
        (tmp_path / protocol / "run.json").write_text(json.dumps({**identity, "protocol": protocol}))
        (tmp_path / protocol / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "compare_protocols.py"), f"--results_dir={tmp_path}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    lines = (tmp_path / "protocols.md").read_text().splitlines()
    assert lines[4].startswith("| attack | P_suc paper | D̄ paper | SSIM paper | smoothness paper | ms/image paper |")
    assert "| C&W | 1.000 | 1.500 | 0.800 | 0.300 | 100 | 1.000 | 0.750 | 0.960 | 0.200 | 600 |" in lines
    assert "| PGD2 | 0.500 | 3.000 | n/a | n/a | n/a | as paper |  |  |  |  |" in lines
    assert (tmp_path / "protocols_operating_characteristic.png").stat().st_size > 0


def test_run_experiment_refuses_a_dataset_whose_ids_are_not_unique(tmp_path, fashion_test, c4_model):
    """Records are keyed by image id: two images of one id would leave one record (and one saved PNG)."""
    from smoothadv_tf.data import DataError, Dataset

    ids = list(fashion_test.ids[:10])
    ids[7] = ids[2]
    dataset = Dataset(fashion_test.images[:10], fashion_test.labels[:10], ids, 10)
    path = tmp_path / "records.jsonl"
    with evaluation.RecordStore(str(path)) as store, pytest.raises(DataError, match=r"image ids \['test-00002'\]"):
        evaluation.run_experiment(c4_model, dataset, ["fgsm"], "mnist", store, np.arange(5), progress=False)
    assert not path.exists()


def test_attack_runs_take_only_their_own_overrides():
    """An sC&W option never reaches C&W; a norm key reaches the attacks of its norm only, as their epsilon (one
    run, no sweep), and leaves the other norm's sweep alone."""
    overrides = {"alpha": 0.9, "epsilon_l2": 2.0}
    (cw,) = evaluation.attack_runs("carlini_wagner_l2", "mnist", overrides=overrides)
    (scw,) = evaluation.attack_runs("smooth_carlini_wagner_l2", "mnist", overrides=overrides)
    assert "alpha" not in cw and scw["alpha"] == 0.9
    assert [r["epsilon"] for r in evaluation.attack_runs("pgd2", "mnist", overrides=overrides)] == [2.0]
    fgsm = evaluation.attack_runs("fgsm", "mnist", overrides=overrides)
    assert [r["epsilon"] for r in fgsm] == evaluation.TARGETS["mnist"]["fgsm"]
    assert all(set(r) <= set(presets.OPTIONS["fgsm"]) for r in fgsm)


def test_run_experiment_judges_and_measures_the_image_the_attacks_round_to(tmp_path, fashion_test, c4_model):
    """Off-grid images (float images of API users; 16-bit PNGs load as values / 65535): quantising attacks
    round x to 8 bits on entry and judge "originally correct" there, so the clean record judges that image
    too (also where rounding moves an image across the model's decision boundary), and an image the attack
    leaves as it is scores as the image itself (PSNR +inf, smoothness 0, SSIM 1), not as its rounding noise."""
    import tensorflow as tf

    from smoothadv_tf import attacks
    from smoothadv_tf.data import Dataset

    x, y = fashion_test.images[:500], fashion_test.labels[:500]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = c4_model(xt)
        true = tf.gather(logits, y, batch_dims=1)
        margin = true - tf.reduce_max(logits - 1e9 * tf.one_hot(y, 10), -1)
    gradient = tape.gradient(margin, xt).numpy()
    correct = np.argmax(logits.numpy(), -1) == y
    # nudged towards the other side of the boundary by less than half an 8-bit level: it rounds back to x
    toward = np.where(correct[:, None, None, None], -np.sign(gradient), np.sign(gradient))
    off = np.clip(x + 0.45 / 255 * toward, 0, 1).astype(np.float32)
    assert np.array_equal(attacks.quantize(off).numpy(), attacks.quantize(x).numpy())
    flipped = (np.argmax(c4_model(off).numpy(), -1) == y) != correct
    pick = np.concatenate([np.flatnonzero(flipped)[:4], np.flatnonzero(~flipped)[:4]])
    assert flipped.sum() > 0 and len(pick) == 8, flipped.sum()
    dataset = Dataset(off[pick], y[pick], [f"off-{i}" for i in pick], 10)
    untouched = {"epsilon_l2": 1e-6, "step_l2": 1e-6, "iterations": 1}  # far below one 8-bit level
    with evaluation.RecordStore(str(tmp_path / "records.jsonl")) as store:
        evaluation.run_experiment(
            c4_model, dataset, ["pgd2"], "mnist", store, np.arange(8), batch_size=8, overrides=untouched, progress=False
        )
    records = evaluation.read_records(str(tmp_path / "records.jsonl"))
    clean = {r["image_id"]: r["correct"] for r in records if r["attack"] == "clean"}
    result = attacks.pgd2(c4_model, off[pick], y[pick], epsilon=1e-6, step=1e-6, iterations=1)
    assert [clean[i] for i in dataset.ids] == result.originally_correct.tolist()
    assert [clean[i] for i in dataset.ids[:4]] == correct[pick[:4]].tolist()  # rounding undid the nudge
    attacked = [r for r in records if r["attack"] == "pgd2"]
    assert len(attacked) == 8
    for r in attacked:
        assert not r["success"] and r["distortion"] == 0.0, r
        assert r["psnr"] is None and r["smoothness"] == 0.0 and r["ssim"] == pytest.approx(1.0, abs=1e-6), r
