"""The ImageNet path end to end on a tiny budget: a slim InceptionV3 checkpoint written by tf_slim (random
weights), a NIPS-17-format folder made here from real photos, and scripts/white_box.py over all six attacks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import photos
from PIL import Image
from test_slim_models import slim_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_white_box_on_nips17_with_slim_checkpoint(tmp_path):
    images = np.round(photos(299, 2) * 255) / 255  # what the PNGs will hold
    logits, ckpt = slim_reference("inception_v3", images, str(tmp_path / "inception_v3.ckpt"), "V1")
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
        "--batch_size=2",
        "--attack_params=iterations=2,binary_search_steps=1,cg_iterations=5",
        f"--output_dir={tmp_path}/out",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "out/white_box/nips17-inception_v3/summary.json").read_text())
    assert summary["images"] == 2 and summary["correct"] == 2  # our Keras model agrees with slim
    assert list(summary["attacks"]) == [
        "fgsm",
        "ifgsm",
        "pgd2",
        "carlini_wagner_l2",
        "smooth_pgd2",
        "smooth_carlini_wagner_l2",
    ]
    for row in summary["attacks"].values():
        assert row["images"] == 2 and 0.0 <= row["p_suc"] <= 1.0
    assert "| sC&W |" in done.stdout
