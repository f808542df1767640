"""The ImageNet path end to end on a tiny budget: a slim InceptionV3 checkpoint written by tf_slim (random
weights), a NIPS-17-format folder made here from real photos, and scripts/white_box.py over all six attacks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

# One xdist worker builds the session's tf_slim graphs (conftest) and runs every test that uses them.
pytestmark = pytest.mark.xdist_group("slim")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_white_box_on_nips17_with_slim_checkpoint(tmp_path, slim_inception_v3):
    images, logits, paths = slim_inception_v3  # the photos hold 8-bit values, as the PNGs will
    ckpt = paths["V1"]
    labels = np.argmax(logits, -1)  # random weights: take slim's own predictions as the true labels
    data_dir = tmp_path / "nips17"
    data_dir.mkdir()
    rows = ["ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,OriginalLandingURL,License,Author,AuthorProfileURL"]
    for k, img in enumerate(images):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(data_dir / f"im{k}.png")
        rows.append(f"im{k},u,0,0,1,1,{labels[k]},1,u,l,a,p")
    (data_dir / "dev_dataset.csv").write_text("\n".join(rows) + "\n")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "scripts", "white_box.py"),
        "--dataset=nips17",
        f"--data_dir={data_dir}",
        "--model=inception_v3",
        f"--checkpoint={ckpt}",
        "--num_images=2",
        "--memory_budget_gb=0.45",  # no --batch_size: the batch comes from the budget (InceptionV3: ~0.17 GiB/image)
        "--attack_params=iterations=2,binary_search_steps=1,cg_iterations=5",
        f"--output_dir={tmp_path}/out",
        "--save_images",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| sC&W |" in done.stdout
    # the batch size chosen from the memory budget, said with its reasons: 0.45 GiB less 0.09 GiB of weights
    # holds two images of ~0.17 GiB (one would be the fall-back for a budget too small)
    assert "--batch_size not given: batches of 2 over 1 device(s), from --memory_budget_gb=0.45: " in done.stdout
    assert "GiB per image (the model's forward + backward" in done.stdout
    assert "in 0.36 GiB per device after the weights" in done.stdout
    check_white_box_outputs(tmp_path / "out/white_box/nips17-inception_v3/paper", data_dir, labels)


def check_white_box_outputs(out, data_dir, labels):
    """The run's records, saved images and summary agree with each other and with what each attack promises."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and summary["correct"] == 2  # our Keras model agrees with slim
    assert list(summary["attacks"]) == ATTACKS
    runs = json.loads((out / "run.json").read_text())["attacks"]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    clean = {r["image_id"]: r for r in records if r["attack"] == "clean"}
    assert sorted(clean) == ["im0", "im1"]
    assert all(r["label"] == labels[int(i[2:])] == r["prediction"] and r["correct"] for i, r in clean.items())

    # Every attack ran on both images at each of its recorded parameter sets (one per target ε), once.
    attacked = [r for r in records if r["attack"] != "clean"]
    expected = sorted((a, str(p.get("epsilon")), i) for a in ATTACKS for p in runs[a] for i in ("im0", "im1"))
    assert sorted((r["attack"], str(r["target"]), r["image_id"]) for r in attacked) == expected
    assert [len(runs[a]) for a in ATTACKS] == [6, 6, 6, 1, 6, 1]  # the ImageNet ε sweeps; C&W runs once
    original = {i: _png(data_dir / f"{i}.png") for i in clean}
    n = next(iter(original.values())).size
    for r in attacked:
        image_id, attack, target = r["image_id"], r["attack"], r["target"]
        assert r["label"] == clean[image_id]["label"]
        assert r["success"] == (r["prediction"] != r["label"])  # untargeted: success means misclassified
        # the recorded distortion is that of the saved 8-bit adversarial image (what was judged)
        folder = attack if target is None else f"{attack}-{target:g}"
        adversarial = _png(out / "images" / folder / f"{image_id}.png")
        delta = adversarial - original[image_id]
        assert abs(np.linalg.norm(delta) - r["distortion"]) <= 1e-4, r
        params = next(p for p in runs[attack] if p.get("epsilon") == target)
        if attack in ("fgsm", "ifgsm"):  # L∞ ball of radius ε, up to the 8-bit rounding
            assert 0 < np.abs(delta).max() <= target + 0.5 / 255 + 1e-6, r
            steps = 1 if attack == "fgsm" else params["iterations"]
            assert 1 <= r["iterations"] <= steps and steps in (1, 2), r  # one step, or I-FGSM's 2 (early stop)
        elif attack in ("pgd2", "smooth_pgd2"):  # L2 ball of radius ε, up to the 8-bit rounding
            assert 0 < r["distortion"] <= target + 0.5 / 255 * np.sqrt(n), r
            assert 1 <= r["iterations"] <= params["iterations"] == 2, r
        else:  # C&W, sC&W: 2 Adam steps each; a success moved the image (x_o is correctly classified)
            assert r["iterations"] == params["iterations"] == 2, r
            assert r["distortion"] > 0 or not r["success"], r

    # The summary is the §5.1 protocol applied to those records: an image succeeds if any run does, with the
    # least successful distortion; P_suc over the N correctly classified images, D̄ over the successes (eq. 20).
    for attack in ATTACKS:
        best = {}
        for r in attacked:
            if r["attack"] == attack:
                d = r["distortion"] if r["success"] else np.inf
                best[r["image_id"]] = min(best.get(r["image_id"], np.inf), d)
        wins = [d for d in best.values() if np.isfinite(d)]
        row = summary["attacks"][attack]
        assert row["images"] == 2 and row["successes"] == len(wins), (attack, row)
        assert row["p_suc"] == len(wins) / 2
        if wins:
            assert np.isclose(row["mean_distortion"], np.mean(wins), rtol=1e-9), (attack, row)
    assert any(r["success"] for r in attacked)  # the checks above saw successes, not only x_o returned


def _png(path):
    return np.asarray(Image.open(path), np.float64) / 255.0


ATTACKS = ["fgsm", "ifgsm", "pgd2", "carlini_wagner_l2", "smooth_pgd2", "smooth_carlini_wagner_l2"]
