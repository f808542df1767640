"""merge_results.py merges shard records INTO a folder's records: nothing recorded before is lost, and shards
that are not one run over every shard, records of another run or conflicting duplicates are refused (exit 2, one
line, nothing written). Driven through the scripts on real Fashion-MNIST with a real C4, as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter

import pytest
from conftest import assert_refused, run_script, tree

from smoothadv_tf import evaluation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = "white_box/fashion_mnist-c4/paper"
SHARDS = ("records-shard0000-of-0002.jsonl", "records-shard0001-of-0002.jsonl")


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def refused(done: subprocess.CompletedProcess, script: str, *fragments: str) -> None:
    assert_refused(done, script, *fragments)


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


@pytest.mark.slow
def test_shards_skip_what_records_jsonl_holds_and_a_retry_after_the_merge_is_a_no_op(before_merge, tmp_path, c4_path):
    """A shard reads the folder's records.jsonl: it recomputes nothing recorded there (in another batch
    composition TF's kernels may round differently, and the merge would refuse the difference), copying only the
    clean records of its images; so a shard retried after the merge adds nothing and the merge removes it as a
    no-op, though the other shards' files are gone; an extension computes only the new images."""
    folder = copy(before_merge, tmp_path)
    ok(run_script("merge_results.py", f"--results_dir={folder}"))
    merged = (folder / "records.jsonl").read_bytes()
    held = {evaluation.record_key(r): r for r in evaluation.read_records(str(folder / "records.jsonl"))}

    white_box(tmp_path / "out", c4_path, *PGD2, "--num_images=20", "--num_shards=2", "--shard_index=1")  # a retry
    retried = evaluation.read_records(str(folder / SHARDS[1]))
    assert {r["attack"] for r in retried} == {"clean"} and len(retried) == 10, (
        "a shard recomputed keys records.jsonl holds: experiment.run must open its RecordStore with done_in"
    )  # its images, named
    assert all(held[evaluation.record_key(r)] == r for r in retried)  # copied, not recomputed
    done = ok(run_script("merge_results.py", f"--results_dir={folder}"))
    assert "add nothing" in done.stdout
    assert (folder / "records.jsonl").read_bytes() == merged and not (folder / SHARDS[1]).exists()
    done = ok(run_script("merge_results.py", f"--results_dir={folder}"))  # no shard files: the tables only
    assert "nothing to merge" in done.stdout and (folder / "records.jsonl").read_bytes() == merged

    pgd2_shards(tmp_path / "out", c4_path, 24)  # four more images
    computed = [r for name in SHARDS for r in evaluation.read_records(str(folder / name)) if r["attack"] == "pgd2"]
    assert len(computed) == 4 * 6 and not {evaluation.record_key(r) for r in computed} & set(held)
    ok(run_script("merge_results.py", f"--results_dir={folder}"))
    assert (folder / "records.jsonl").read_bytes().startswith(merged)
    assert counts(folder) == {"clean": 24, "fgsm": 120, "pgd2": 144}


def edit_shard(folder, index, keep=lambda r: True, change=lambda r: r):
    path = folder / SHARDS[index]
    records = [change(dict(r)) for r in evaluation.read_records(str(path)) if keep(r)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def assert_merge_refused(folder, fragment: str) -> None:
    """merge_results.py refuses the folder with one line holding `fragment` and changes nothing in it."""
    before = tree(folder)
    refused(run_script("merge_results.py", f"--results_dir={folder}"), "merge_results.py", fragment)
    assert tree(folder) == before


def image_ids(folder, shard: int) -> list[str]:
    return sorted({r["image_id"] for r in evaluation.read_records(str(folder / SHARDS[shard]))})


@pytest.mark.slow
def test_merge_refuses_shards_of_other_attacks_or_images(before_merge, tmp_path):
    def fresh():
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        return copy(before_merge, tmp_path)

    # shard 1 as if run with --num_images=10: images 1, 3, ..., 9 only
    folder = fresh()
    ids = image_ids(folder, 1)
    edit_shard(folder, 1, keep=lambda r: r["image_id"] in ids[:5])
    assert_merge_refused(folder, "the shards hold clean records of [10, 5] images, not one --num_images")

    # shard 1 as if run without PGD₂ (another --attacks)
    folder = fresh()
    edit_shard(folder, 1, keep=lambda r: r["attack"] != "pgd2")
    assert_merge_refused(folder, "shard 1 has no pgd2 (target 1.0) record of 10 of its 10 images (e.g. ")

    # shard 0 stopped before its last ε runs on some images
    folder = fresh()
    first = image_ids(folder, 0)[0]
    edit_shard(folder, 0, keep=lambda r: not (r["image_id"] == first and r.get("target") == 6.0))
    assert_merge_refused(folder, f"shard 0 has no pgd2 (target 6.0) record of 1 of its 10 images (e.g. {first})")

    # shard 1 killed after the clean record of its last image (the last of the run) and before its attack: each
    # key alone is a valid split (PGD₂ of 19 images), but that image has a clean record and no PGD₂ one
    folder = fresh()
    last = image_ids(folder, 1)[-1]
    edit_shard(folder, 1, keep=lambda r: not (r["image_id"] == last and r["attack"] == "pgd2"))
    assert_merge_refused(folder, f"shard 1 has no pgd2 (target 1.0) record of 1 of its 10 images (e.g. {last})")


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
    nan = {**a, "distortion": float("nan")}
    assert evaluation.record_conflict(nan, {**nan, "seconds": 0.2}) is None  # NaN is NaN's duplicate
    assert evaluation.record_conflict(nan, a) == "distortion nan vs 0.8"


def test_shard_coverage_matches_shard_indices():
    """Every split shard_indices makes is accepted; one image fewer in a shard is refused, unless that shard
    owns the last image (then the shards are exactly the split of --num_images one lower). An image with a
    clean record and no attack record (a shard killed between the two) is refused in any shard, the last
    image's too."""
    for num_images in range(1, 12):
        for num_shards in (1, 2, 3, 5):
            shards = [
                [{"image_id": str(i), "attack": a, "target": None} for i in idx for a in ("clean", "carlini_wagner_l2")]
                for idx in (evaluation.shard_indices(num_images, num_shards, k) for k in range(num_shards))
            ]
            assert evaluation.shard_coverage_problem(shards) is None
            for k, shard in enumerate(shards):
                if shard and num_images > 1:  # (with no attack record anywhere, nothing says C&W ran)
                    # killed after the clean record of its last image
                    cut = [*shards[:k], shard[:-1], *shards[k + 1 :]]
                    assert "has no carlini_wagner_l2 record of 1 of its" in evaluation.shard_coverage_problem(cut)
                if shard and k != (num_images - 1) % num_shards:
                    short = [r for r in shard if r["image_id"] != shard[0]["image_id"]]
                    assert evaluation.shard_coverage_problem([*shards[:k], short, *shards[k + 1 :]]) is not None
                    assert evaluation.shard_coverage_problem([*shards[:k], shard[1:], *shards[k + 1 :]]) is not None


def test_shard_coverage_counts_the_records_already_in_the_folder():
    """Shards that skipped keys records.jsonl holds (their files hold the copied clean records of their images
    and only the attack records they computed) are complete with what records.jsonl holds, and only then."""

    def r(i, attack, target=None):
        return {"image_id": f"im{i}", "attack": attack, "target": target}

    existing = [r(i, a) for i in range(6) for a in ("clean", "fgsm")] + [r(i, "pgd2", 1.0) for i in range(4)]
    shards = [
        [r(i, "clean") for i in (0, 2, 4, 6)] + [r(i, "pgd2", 1.0) for i in (4, 6)] + [r(6, "fgsm")],
        [r(i, "clean") for i in (1, 3, 5, 7)] + [r(i, "pgd2", 1.0) for i in (5, 7)] + [r(7, "fgsm")],
    ]
    assert evaluation.shard_coverage_problem(shards, existing=existing) is None
    assert evaluation.shard_coverage_problem(shards, {"fgsm": [None], "pgd2": [1.0]}, existing) is None
    # without records.jsonl, the same shard files lack PGD₂ of images 0..3 and FGSM of 0..5
    assert "shard 0 has no fgsm record of 3 of its 4 images (e.g. im0)" in evaluation.shard_coverage_problem(shards)
    # records.jsonl lacks PGD₂ of image 3 (an earlier run stopped early): shard 1 is not complete with it
    partial = [x for x in existing if (x["image_id"], x["attack"]) != ("im3", "pgd2")]
    problem = evaluation.shard_coverage_problem(shards, existing=partial)
    assert "shard 1 has no pgd2 (target 1.0) record of 1 of its 4 images (e.g. im3)" in problem
    # a target run.json lists that neither the shards nor records.jsonl hold
    problem = evaluation.shard_coverage_problem(shards, {"fgsm": [None], "pgd2": [1.0, 2.0]}, existing)
    assert "shard 0 has no pgd2 (target 2.0) record of 4 of its 4 images" in problem
    # attack records of an image the shard's file has no clean record of (the clean counts are a valid split)
    orphan = [shards[0], [x for x in shards[1] if x != r(7, "clean")]]
    assert "shard 1 has attack records of 1 image(s) it has no clean record of (e.g. im7)" in (
        evaluation.shard_coverage_problem(orphan, None, existing)
    )
    stray = [[*shards[0], r(9, "fgsm")], shards[1]]
    assert "shard 0 has attack records of 1 image(s) it has no clean record of (e.g. im9)" in (
        evaluation.shard_coverage_problem(stray, None, existing)
    )


def test_a_shard_store_skips_and_never_writes_the_folders_records(tmp_path):
    """RecordStore(done_in=records.jsonl): its keys count as recorded, append leaves them out of the shard's
    file, copy_done copies them verbatim; records.jsonl itself is only read."""
    folder_records = tmp_path / "records.jsonl"
    done = [
        {"evaluated_on": "self", "image_id": "a", "attack": "clean", "target": None, "correct": True},
        {"evaluated_on": "self", "image_id": "a", "attack": "pgd2", "target": 1.0, "distortion": 0.5},
    ]
    folder_records.write_text("".join(json.dumps(x) + "\n" for x in done) + '{"image_id": "b", "att')  # mid-write
    original = folder_records.read_bytes()
    shard = tmp_path / SHARDS[0]
    with evaluation.RecordStore(str(shard), done_in=str(folder_records)) as store:
        assert store.has(("self", "a", "clean", None)) and store.has(("self", "a", "pgd2", 1.0))
        assert not store.has(("self", "b", "clean", None)) and store.records == []
        recomputed = {**done[1], "distortion": 0.5001}
        fresh = {**done[1], "image_id": "b"}
        store.append([recomputed, fresh])
        assert evaluation.read_records(str(shard)) == [fresh]  # the folder's key is not written again
        store.copy_done([("self", "a", "clean", None), ("self", "a", "clean", None), ("self", "b", "pgd2", 1.0)])
        store.copy_done([("self", "a", "clean", None)])  # once
        assert evaluation.read_records(str(shard)) == [fresh, done[0]]
    assert folder_records.read_bytes() == original
    with evaluation.RecordStore(str(tmp_path / "other.jsonl"), done_in=str(tmp_path / "absent.jsonl")) as store:
        assert store.done == {} and not store.has(("self", "a", "clean", None))


@pytest.mark.slow
def test_more_shards_than_images_merge(tmp_path, c4_path):
    """2 images over 3 shards: the shard given none still leaves its (empty) file, so the merge is not refused
    for ever as 'has not run'."""
    fgsm = ["--attacks=fgsm", "--attack_params=epsilon=0.1", "--num_images=2", "--num_shards=3"]
    for index in range(3):
        white_box(tmp_path, c4_path, *fgsm, f"--shard_index={index}")
    folder = tmp_path / FOLDER
    assert (folder / "records-shard0002-of-0003.jsonl").read_text() == ""
    ok(run_script("merge_results.py", f"--results_dir={folder}"))
    assert counts(folder) == Counter({"clean": 2, "fgsm": 2})
