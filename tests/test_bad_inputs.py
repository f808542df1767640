"""Bad input, driven through the scripts as a user meets it: each bad flag and each bad file gives exit status 2,
one line on stderr naming the flag or file and the problem, no traceback, and nothing written.

Every script here runs with TensorFlow as loud as it gets (conftest.LOUD_ENV: all of TensorFlow's native logs,
oneDNN on, and notices injected at start-up and at TensorFlow's import): the one line must still be the only
one, whatever the machine prints. Flags and files are checked before TensorFlow is imported, so most cases here
cost a fraction of a second each.
"""

from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest
from conftest import assert_refused, run_script, tree

from smoothadv_tf import data, evaluation

# ------------------------------------------------------------------------------------------------- flags
FLAG_CASES = [
    ("white_box.py", ["--protocol=weak"], ["flag --protocol=weak: value should be one of <paper|strong>"]),
    ("white_box.py", ["--batch_size=x"], ["flag --batch_size=x"]),
    ("white_box.py", ["--num_images=0"], ["flag --num_images=0"]),
    ("white_box.py", ["--batch_size=0"], ["flag --batch_size=0"]),
    ("white_box.py", ["--num_images=-1"], ["flag --num_images=-1"]),
    ("white_box.py", ["--no_such_flag=1"], ["no_such_flag"]),
    ("white_box.py", ["--num_shards=2", "--shard_index=2"], ["--shard_index=2", "need 0 <= index < shards"]),
    ("white_box.py", ["--num_shards=2"], ["--num_shards=2 needs --shard_index (or a scheduler's"]),
    ("white_box.py", ["--attacks=fgsm,cw"], ["--attacks: unknown ['cw']"]),
    ("white_box.py", ["--attack_params=iterations=abc"], ["--attack_params: iterations=abc: expected an integer"]),
    ("white_box.py", ["--attack_params=iterations=2.5"], ["iterations=2.5: expected an integer"]),
    ("white_box.py", ["--attack_params=epsilon=big"], ["--attack_params: epsilon=big: expected a number"]),
    ("white_box.py", ["--attack_params=abort_early=maybe"], ["abort_early=maybe: expected true or false"]),
    (
        "white_box.py",
        ["--attack_params=distortion_penalty=l1"],
        ["--attack_params:", "distortion_penalty='l1': expected one of ['squared', 'norm']"],
    ),
    (
        "white_box.py",
        ["--attacks=carlini_wagner_l2", "--attack_params=smooth_first_step=true"],
        ["smooth_first_step: none of the selected attacks ['carlini_wagner_l2'] takes it"],
    ),
    ("white_box.py", ["--attack_params=iterations"], ["'iterations' is not key=value"]),
    ("white_box.py", ["--attack_params=colour=red"], ["colour: none of the selected attacks"]),
    (
        "white_box.py",
        ["--attacks=fgsm", "--attack_params=iterations=5"],
        ["iterations: none of the selected attacks ['fgsm']"],
    ),
    ("white_box.py", ["--attacks=pgd2", "--attack_params=iterations=0"], ["pgd2: iterations=0: must be at least 1"]),
    ("white_box.py", ["--attacks=pgd2", "--attack_params=epsilon=-1"], ["pgd2: epsilon=-1.0: must be positive"]),
    (
        "white_box.py",
        ["--attacks=smooth_carlini_wagner_l2", "--attack_params=alpha=1.5"],
        ["smooth_carlini_wagner_l2: alpha=1.5: must be in [0, 1)"],
    ),
    ("white_box.py", ["--attacks=smooth_pgd2", "--attack_params=solver=lu"], ["solver='lu': expected one of"]),
    (
        "white_box.py",
        ["--attack_params=epsilon=2"],
        ["--attack_params: epsilon is an L∞ size for ['fgsm', 'ifgsm'] and an L2 size for ['pgd2', 'smooth_pgd2']"],
    ),
    (
        "white_box.py",
        ["--attacks=fgsm", "--attack_params=epsilon_l2=2"],
        ["--attack_params: epsilon_l2: none of the selected attacks ['fgsm'] takes it"],
    ),
    (
        "white_box.py",
        ["--attacks=pgd2", "--attack_params=margin=1"],
        ["--attack_params: margin: none of the selected attacks ['pgd2'] takes it"],
    ),
    ("white_box.py", ["--model=inception_v3", "--dataset=nips17"], ["--dataset=nips17 needs --data_dir"]),
    ("white_box.py", ["--data_dir=/no/such/dir"], ["--data_dir=/no/such/dir: no such directory"]),
    ("white_box.py", ["--checkpoint=/no/such/c4.keras"], ["--checkpoint=/no/such/c4.keras: no such file"]),
    ("white_box.py", ["--attacks="], ["--attacks: empty"]),
    ("white_box.py", ["--seed=-1"], ["flag --seed=-1"]),
    ("white_box.py", ["--output_dir=/etc/passwd/results"], ["--output_dir=/etc/passwd/results: /etc/passwd is not a"]),
    (
        "white_box.py",
        ["--dataset=folder", "--data_dir=OUT"],
        ["--model=c4 --dataset=folder: a C4 is trained here only on mnist / fashion_mnist"],
    ),
    ("white_box.py", ["--model=keras:VGG16"], ["flag --model=keras:VGG16: keras:<Name> with Name in"]),
    (
        "white_box.py",
        ["--model=savedmodel:/no/model"],
        ["flag --model=savedmodel:/no/model: savedmodel:<dir>: '/no/model'"],
    ),
    (
        "white_box.py",
        ["--model=keras:MobileNetV2", "--checkpoint=/no/w.h5", "--dataset=folder", "--data_dir=OUT"],
        ["--checkpoint=/no/w.h5: no such weights file for --model=keras:MobileNetV2"],
    ),
    (
        "white_box.py",
        ["--model=keras:ResNet50", "--dataset=nips17", "--data_dir=OUT"],
        ["--dataset=nips17 holds 299x299 images and --model=keras:ResNet50 takes 224x224"],
    ),
    ("white_box.py", ["--memory_budget_gb=0"], ["flag --memory_budget_gb=0"]),
    ("white_box.py", ["--devices=tpu:0"], ["flag --devices=", "'tpu:0' is not a device name"]),
    ("white_box.py", ["--devices=GPU:0,CPU:0"], ["flag --devices=", "name GPUs or CPUs, not both"]),
    ("white_box.py", ["--devices=CPU:0,cpu:0"], ["flag --devices=", "CPU:0,CPU:0: a device is named twice"]),
    ("white_box.py", ["--devices=GPU:99"], ["--devices=GPU:99: GPU:99: no such device here (this process sees"]),
    (
        "white_box.py",
        ["--notensorboard", "--trace_iterations"],
        ["--trace_iterations: TensorBoard output, but --notensorboard is given"],
    ),
    (
        "white_box.py",
        ["--attacks=fgsm,pgd2", "--trace_iterations"],
        ["--trace_iterations: none of --attacks=fgsm,pgd2 is traced per iteration"],
    ),
    ("white_box.py", ["--tensorboard_dir=/dev/null"], ["--tensorboard_dir=/dev/null: exists and is not a directory"]),
    ("transfer.py", ["--notensorboard", "--tensorboard_dir=OUT"], ["--tensorboard_dir: TensorBoard output, but"]),
    ("examples.py", ["--trace_iterations"], ["--trace_iterations: not used here"]),
    ("protocol_sweep.py", ["--trace_iterations"], ["--trace_iterations: not used here"]),
    ("adversarial_training.py", ["--model=c4"], ["--model=c4: this experiment attacks c4_adv or adv_inception_v3"]),
    ("adversarial_training.py", ["--c4_epochs=0"], ["flag --c4_epochs=0"]),
    ("transfer.py", ["--model=resnet_v2_50"], ["the transfer source is c4 or inception_v3"]),
    ("transfer.py", ["--target_checkpoint=/no/adv.keras"], ["--target_checkpoint=/no/adv.keras: no such file"]),
    ("transfer.py", ["--bilateral_sigma_d=0"], ["flag --bilateral_sigma_d=0.0: must be positive"]),
    ("transfer.py", ["--bilateral_radius=0"], ["flag --bilateral_radius=0"]),
    ("examples.py", ["--protocol=strong"], ["records.jsonl not found: run scripts/white_box.py"]),
    ("magnify.py", [], ["give --images_dir/--image_id or --image"]),
    ("magnify.py", ["--beta=2"], ["flag --beta=2.0: must be in [0, 1]"]),
    ("magnify.py", ["--sigma_r=-1"], ["flag --sigma_r=-1.0: must be positive"]),
    ("magnify.py", ["--image=not_a_photo"], ["--image=not_a_photo: neither a file nor a scikit-image photo"]),
    ("magnify.py", ["--images_dir=OUT", "--image_id=x", "--image=astronaut"], ["not both"]),
    ("merge_results.py", ["--results_dir=OUT"], ["no records-shard*.jsonl files"]),
    ("merge_results.py", [], ["Flag --results_dir must have a value other than None"]),
    ("compare_protocols.py", ["--results_dir=OUT"], ["paper/run.json not found"]),
    ("protocol_sweep.py", ["--iteration_counts=100,x"], ["--iteration_counts"]),
    ("protocol_sweep.py", ["--max_binary_steps=0"], ["flag --max_binary_steps=0"]),
    ("train_mnist.py", ["--epochs=0"], ["flag --epochs=0"]),
    ("train_mnist.py", ["--learning_rate=0"], ["flag --learning_rate=0.0: must be positive"]),
    (
        "train_mnist.py",
        ["--adversarial_training", "--train_params=fraction=1.5"],
        ["--train_params: train_attack=step_ll: fraction=1.5: must be in (0, 1]"],
    ),
    ("train_mnist.py", ["--train_attack=smooth_pgd2"], ["--train_attack: only used with --adversarial_training"]),
    (
        "adversarial_training.py",
        ["--train_attack=smooth_ddn", "--train_params=iterations=0"],
        ["--train_params: train_attack=smooth_ddn: iterations=0: must be at least 1"],
    ),
    ("bench_training.py", ["--train_attacks=clean,pgd3"], ["--train_attacks=clean,pgd3: expected some of"]),
    ("bench_training.py", ["--batches=0"], ["flag --batches=0"]),
    ("bench_attacks.py", ["--iterations=0"], ["flag --iterations=0"]),
    ("bench_tracing.py", ["--attacks=pgd2"], ["--attacks=pgd2: ['pgd2'] are not traced; expected some of"]),
    ("bench_tracing.py", ["--checkpoint=/no/c4.keras"], ["--checkpoint=/no/c4.keras: no such file"]),
    ("bench_smoothing.py", ["--batch_sizes=1,two"], ["flag --batch_sizes=['1', 'two']: must be positive integers"]),
    ("download_checkpoints.py", ["--names=vgg"], ["flag --names=['vgg']: expected names from"]),
]


# the only flag cases that need TensorFlow to be found bad: which devices exist
NEED_TENSORFLOW = {("white_box.py", "--devices=GPU:99")}


@pytest.mark.parametrize(
    "script, args, fragments", FLAG_CASES, ids=[f"{c[0]}:{' '.join(c[1]) or 'no-flags'}" for c in FLAG_CASES]
)
def test_bad_flag(tmp_path, script, args, fragments):
    """Each bad flag: exit 2, one line, nothing written (the output root is never created), and TensorFlow not
    even imported unless the check needs it."""
    out = tmp_path / "out"
    args = [a.replace("OUT", str(out)) for a in args]
    extra = [f"--output_dir={out}"] if script in ("white_box.py", "adversarial_training.py", "transfer.py") else []
    extra += [f"--output_dir={out}"] if script == "examples.py" else []
    extra += [f"--output={out}/x.json"] if script.startswith("bench_") else []
    extra += [f"--models_dir={out}"] if script == "download_checkpoints.py" else []
    extra += [f"--output={out}/x.keras"] if script == "train_mnist.py" else []
    extra = [e for e in extra if not any(a.startswith(e.split("=")[0] + "=") for a in args)]
    marker = tmp_path.parent / f"{tmp_path.name}.tensorflow-imported"
    done = run_script(script, *args, *extra, cwd=tmp_path, env={"LOUD_TF_IMPORT_MARKER": str(marker)})
    assert_refused(done, script, *fragments)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)
    assert marker.exists() == ((script, " ".join(args)) in NEED_TENSORFLOW), "TensorFlow imported: " + str(
        marker.exists()
    )


# -------------------------------------------------------------------------------------------------- files
@pytest.fixture
def idx_copy(tmp_path):
    """The real Fashion-MNIST test IDX files, uncompressed, in a folder of their own."""
    folder = tmp_path / "idx"
    folder.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(os.path.join(data.FASHION_MNIST_DIR, stem + ".gz")) as src:
            (folder / stem).write_bytes(src.read())
    return folder


def save_png(path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)


@pytest.fixture
def photo_folder(tmp_path):
    """Two real 299x299 RGB photos as PNGs."""
    from conftest import photos

    folder = tmp_path / "photos"
    folder.mkdir()
    for k, img in enumerate(photos(299, 2)):
        save_png(folder / f"p{k}.png", img)
    return folder


IMAGENET = ["--model=inception_v3"]  # images are read before the model is loaded: data errors come first


def test_truncated_idx_file(tmp_path, idx_copy):
    images = idx_copy / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-1000])
    done = run_script("white_box.py", f"--data_dir={idx_copy}", f"--output_dir={tmp_path}/out")
    assert_refused(done, "white_box.py", str(images), "IDX header promises 7840000 bytes of data, file has 7839000")
    assert not (tmp_path / "out").exists()


def test_corrupt_png_in_an_image_folder(tmp_path, photo_folder):
    broken = photo_folder / "p1.png"
    broken.write_bytes(broken.read_bytes()[:200])
    done = run_script(
        "white_box.py", "--dataset=folder", f"--data_dir={photo_folder}", *IMAGENET, f"--output_dir={tmp_path}/out"
    )
    assert_refused(done, "white_box.py", str(broken), "corrupt or unreadable image")
    assert not (tmp_path / "out").exists()


def test_labels_csv_naming_a_missing_image(tmp_path, photo_folder):
    (photo_folder / "dev_dataset.csv").write_text("ImageId,TrueLabel\np0,3\np7,5\n")
    done = run_script(
        "white_box.py", "--dataset=nips17", f"--data_dir={photo_folder}", *IMAGENET, f"--output_dir={tmp_path}/out"
    )
    assert_refused(done, "white_box.py", "dev_dataset.csv: row 3: image", "p7.png not found")
    (photo_folder / "labels.csv").write_text("filename,label\np0.png,3\np9.png,1\n")
    done = run_script(
        "white_box.py", "--dataset=folder", f"--data_dir={photo_folder}", *IMAGENET, f"--output_dir={tmp_path}/out"
    )
    assert_refused(done, "white_box.py", "labels.csv: row 3: image 'p9.png' not in")
    assert not (tmp_path / "out").exists()


def test_nips17_image_of_the_wrong_size(tmp_path, photo_folder):
    from conftest import photos

    save_png(photo_folder / "p1.png", photos(128, 1)[0])
    (photo_folder / "dev_dataset.csv").write_text("ImageId,TrueLabel\np0,3\np1,5\n")
    done = run_script(
        "white_box.py", "--dataset=nips17", f"--data_dir={photo_folder}", *IMAGENET, f"--output_dir={tmp_path}/out"
    )
    assert_refused(done, "white_box.py", "p1.png: image is 128x128, expected 299x299")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ['{"experiment": "white_box", "attac', '{"model": "c4"}'])
def test_damaged_run_identity(tmp_path, content):
    folder = tmp_path / "out/white_box/fashion_mnist-c4/paper"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(content)
    (folder / "records.jsonl").write_text('{"image_id": "a", "attack": "fgsm", "target": 0.1, "success": false}\n')
    before = tree(tmp_path / "out")
    done = run_script("examples.py", f"--output_dir={tmp_path}/out")
    assert_refused(done, "examples.py", f"{folder / 'run.json'}: not a")
    assert tree(tmp_path / "out") == before


@pytest.mark.slow
def test_images_the_model_cannot_take_and_bad_c4_checkpoints(tmp_path, photo_folder, c4_model):
    """Photos (299x299x3) against C4 (28x28x1); a C4 file with a NaN weight; a damaged C4 file."""
    good = tmp_path / "c4.keras"
    c4_model.save(good)
    out = tmp_path / "out"
    done = run_script(
        "white_box.py", "--dataset=folder", f"--data_dir={photo_folder}", f"--checkpoint={good}", f"--output_dir={out}"
    )
    assert_refused(done, "white_box.py", "--dataset=folder: images are 299x299x3, but --model=c4 takes 28x28x1")
    assert not out.exists()

    import keras

    model = keras.models.clone_model(c4_model)
    weights = [w.copy() for w in c4_model.get_weights()]
    weights[0].flat[7] = np.nan
    model.set_weights(weights)
    model.save(tmp_path / "nan.keras")
    done = run_script("white_box.py", f"--checkpoint={tmp_path}/nan.keras", f"--output_dir={out}")
    assert_refused(done, "white_box.py", f"--checkpoint={tmp_path}/nan.keras: NaN or Inf in")
    assert not out.exists()

    damaged = tmp_path / "damaged.keras"
    damaged.write_bytes(good.read_bytes()[:3000])
    done = run_script("white_box.py", f"--checkpoint={damaged}", f"--output_dir={out}")
    assert_refused(done, "white_box.py", f"--checkpoint={damaged}: cannot load a Keras model")
    assert not out.exists()


@pytest.mark.slow
def test_damaged_records_and_a_second_writer(tmp_path, c4_path):
    """A records file with a corrupt middle line is refused untouched; a folder whose records another process
    is writing (here: this test, holding the writer lock) is refused naming that process."""
    common = [
        "--attacks=fgsm",
        "--attack_params=epsilon=0.1",
        "--num_images=20",
        "--batch_size=20",
        f"--checkpoint={c4_path}",
    ]
    out = tmp_path / "out"
    done = run_script("white_box.py", *common, f"--output_dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    folder = out / "white_box/fashion_mnist-c4/paper"
    records = folder / "records.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    assert len(lines) == 40  # 20 clean + 20 FGSM (one ε)
    records.write_text("".join(lines[:10]) + lines[10][:25] + "\n" + "".join(lines[11:]))
    before = tree(out)
    done = run_script("white_box.py", *common, "--num_images=30", f"--output_dir={out}")
    assert_refused(done, "white_box.py", f"{records}: line 11 is not a JSON record")
    assert tree(out) == before

    records.write_text("".join(lines))
    with evaluation.RecordStore(str(records)):
        before = tree(out)
        done = run_script("white_box.py", *common, "--num_images=30", f"--output_dir={out}")
        assert_refused(done, "white_box.py", f"{records} is being written by process {os.getpid()} on host")
        assert tree(out) == before
    done = run_script("white_box.py", *common, "--num_images=30", f"--output_dir={out}")  # lock released: resumes
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(evaluation.read_records(str(records))) == 60

    # examples.py illustrates the run only with the model it attacked
    import keras

    other = keras.models.load_model(c4_path)
    other.set_weights([w * 1.01 for w in other.get_weights()])
    other.save(tmp_path / "other.keras")
    before = tree(out)
    args = [a if not a.startswith("--checkpoint") else f"--checkpoint={tmp_path}/other.keras" for a in common]
    done = run_script("examples.py", *args, f"--output_dir={out}")
    assert_refused(done, "examples.py", "not the model the run in", "attacked (its weights differ)")
    assert tree(out) == before


def test_merge_refuses_missing_or_mixed_shards(tmp_path):
    line = '{"image_id": "a", "attack": "clean", "target": null, "correct": true}\n'
    (tmp_path / "records-shard0000-of-0003.jsonl").write_text(line)
    (tmp_path / "records-shard0002-of-0003.jsonl").write_text(line.replace('"a"', '"c"'))
    done = run_script("merge_results.py", f"--results_dir={tmp_path}")
    assert_refused(done, "merge_results.py", "shards [1] have not run")
    (tmp_path / "records-shard0001-of-0002.jsonl").write_text(line.replace('"a"', '"b"'))
    done = run_script("merge_results.py", f"--results_dir={tmp_path}")
    assert_refused(done, "merge_results.py", "shard files of different --num_shards: [2, 3]")
    assert not (tmp_path / "records.jsonl").exists()


def test_merge_refuses_a_shard_still_being_written(tmp_path):
    shard = tmp_path / "records-shard0000-of-0002.jsonl"
    shard.write_text('{"image_id": "a", "attack": "clean", "target": null, "correct": true}\n')
    shutil.copy(shard, tmp_path / "records-shard0001-of-0002.jsonl")
    with evaluation.RecordStore(str(shard)):
        done = run_script("merge_results.py", f"--results_dir={tmp_path}")
    assert_refused(done, "merge_results.py", f"{shard} is being written by process {os.getpid()}")
    assert not (tmp_path / "records.jsonl").exists()
