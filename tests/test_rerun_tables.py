"""A rerun asking for fewer images than the folder holds reports those images (tables under first<N>/), says the
folder holds more, and leaves the folder's own tables as they were."""

from __future__ import annotations

import json
import re

from conftest import run_script


def test_a_smaller_rerun_reports_the_images_it_asked_for(tmp_path, c4_path):
    common = ["--attacks=fgsm", "--attack_params=epsilon=0.1", f"--checkpoint={c4_path}", f"--output_dir={tmp_path}"]
    first = run_script("white_box.py", *common, "--num_images=30")
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / "white_box/fashion_mnist-c4/paper"
    assert json.loads((folder / "summary.json").read_text())["images"] == 30
    again = run_script("white_box.py", *common, "--num_images=12")
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"^accuracy [0-9.]+ \(\d+/12 images\)$", again.stdout, re.M), again.stdout
    assert (
        f"{folder / 'records.jsonl'} holds records of 30 images; the tables below cover the 12 asked for"
        in again.stdout
    )
    subset = json.loads((folder / "first12/summary.json").read_text())
    assert subset["images"] == 12 and subset["attacks"]["fgsm"]["images"] <= 12
    assert json.loads((folder / "summary.json").read_text())["images"] == 30  # the folder's tables are kept
    assert len((folder / "records.jsonl").read_text().splitlines()) == 60  # nothing recorded is dropped
