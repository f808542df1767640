"""train_mnist.py saves by default exactly where the experiment scripts load their cached C4 for the same
settings, never over another setting's file; settings the cache name cannot hold need --output."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys

import pytest
from conftest import assert_refused, run_script

from smoothadv_tf import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_mnist.py")


def env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}


def from_script(expression: str, *args: str) -> str:
    """repr of `expression` evaluated in the script (loaded as a module `script`, its flags parsed from `args`),
    without training anything."""
    code = (
        "import importlib.util, sys\n"
        "from absl import flags\n"
        f"spec = importlib.util.spec_from_file_location('train_mnist', {SCRIPT!r})\n"
        "script = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(script)\n"
        "flags.FLAGS(['train_mnist.py', *sys.argv[1:]])\n"
        f"print(repr({expression}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args, cache",
    [
        ([], ("c4", "fashion_mnist", 0, 6)),
        (["--epochs=1"], ("c4", "fashion_mnist", 0, 1)),
        (["--adversarial_training", "--seed=3", "--epochs=2", "--dataset=mnist"], ("c4_adv", "mnist", 3, 2)),
        (["--adversarial_training", "--train_attack=smooth_pgd2"], ("c4_adv", "fashion_mnist", 0, 6, "smooth_pgd2")),
        (
            ["--adversarial_training", "--train_attack=pgd2", "--train_params=epsilon=2,iterations=7"],
            ("c4_adv", "fashion_mnist", 0, 6, "pgd2", {"epsilon": 2.0, "iterations": 7}),
        ),
    ],
)
def test_default_output_is_the_cache_the_experiments_load(args, cache):
    path = ast.literal_eval(from_script("script.output_path(*script.training())", *args))
    assert path == experiment.c4_cache_path(*cache)
    if cache[3] != 6:  # one epoch never lands on the standard 6-epoch model
        assert path != experiment.c4_cache_path(*cache[:3], 6)
    if len(cache) > 4:  # another training attack or budget never lands on the paper's step l.l model
        assert path != experiment.c4_cache_path(*cache[:4]) and cache[4] in os.path.basename(path)
        assert path != experiment.c4_cache_path(*cache[:5], {"epsilon": 2.5}) != experiment.c4_cache_path(*cache[:5])


def test_the_experiments_take_the_training_attack_into_cache_and_identity():
    """--train_attack / --train_params of the experiment scripts: the same cache name as train_mnist.py's, and
    the training in the run identity (RunConfig.training)."""
    from smoothadv_tf.config import RunConfig

    config = RunConfig(model="c4_adv", train_attack="smooth_pgd2", train_params={"iterations": 3})
    assert config.training["attack"] == "smooth_pgd2" and config.training["params"]["iterations"] == 3
    assert config.training["params"]["epsilon"] == 1.5  # the rest from the Fashion-MNIST preset
    assert RunConfig(model="c4_adv").training["attack"] == "step_ll"
    assert RunConfig(model="c4").training is None
    from smoothadv_tf.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--train_attack=pgd: expected one of \['step_ll'"):
        RunConfig(model="c4_adv", train_attack="pgd", train_params={"epsilon": 2.0})


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--train_params=iterations=3"], "--train_params: only for --model=c4_adv trained here (no --checkpoint); the model is c4"),
        (["--model=c4_adv", "--checkpoint=CKPT", "--train_attack=pgd2"], "--train_attack: only for --model=c4_adv trained here"),
        (["--model=c4_adv", "--train_attack=pgd2", "--train_params=alpha=0.9"], "--train_params: alpha: --train_attack=pgd2 takes no such option"),
        (["--model=c4_adv", "--train_attack=smooth_pgd2", "--train_params=alpha=1.5"], "--train_params: train_attack=smooth_pgd2: alpha=1.5: must be in [0, 1)"),
    ],
)  # fmt: skip
def test_the_experiments_refuse_training_flags_that_do_nothing_or_are_out_of_range(tmp_path, args, fragment):
    (tmp_path / "c4.keras").write_bytes(b"not a model")
    args = [a.replace("CKPT", str(tmp_path / "c4.keras")) for a in args]
    done = run_script("white_box.py", *args, f"--output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert_refused(done, "white_box.py", fragment)
    assert not (tmp_path / "out").exists()


def test_cache_hyperparameters_are_train_c4s_defaults():
    """The experiment scripts train their cache with train_c4's defaults: the script's idea of the cache's
    settings must be those."""
    from smoothadv_tf.models import train_c4

    cache = ast.literal_eval(from_script("script.CACHE_HYPERPARAMETERS"))
    defaults = {k: p.default for k, p in inspect.signature(train_c4).parameters.items()}
    assert cache == {k: defaults[k] for k in cache} and len(cache) == 2


def run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return run_script("train_mnist.py", *args, cwd=tmp_path)


def refused(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert_refused(done, "train_mnist.py", *fragments)


# --data_dir: a folder without MNIST files, so a run that got past the checks stops at the data instead of
# training (and the refusal must come before the data is read)
@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--learning_rate=0.01"], ["--learning_rate=0.01 (the cache's: 0.001)", "pass --output"]),
        (["--batch_size=64"], ["--batch_size=64 (the cache's: 128)", "c4_mnist_seed0.keras"]),
        (
            ["--adversarial_training", "--learning_rate=0.01", "--epochs=2"],
            ["--learning_rate=0.01 (the cache's: 0.001)", "c4_adv_mnist_seed0_epochs2.keras"],
        ),
        (["--train_params=fraction=0.25"], ["--train_params: only used with --adversarial_training"]),
        (["--train_attack=pgd2"], ["--train_attack: only used with --adversarial_training"]),
        (["--adversarial_training", "--train_attack=pgd"], ["flag --train_attack=pgd"]),
        (
            ["--adversarial_training", "--train_params=epsilon=0"],
            ["--train_params: train_attack=step_ll: epsilon=0.0: must be positive"],
        ),
        (
            ["--adversarial_training", "--train_params=iterations=3"],
            ["--train_params: iterations: --train_attack=step_ll takes no such option"],
        ),
        (
            ["--adversarial_training", "--train_attack=pgd2", "--train_params=epsilon=big"],
            ["--train_params: epsilon=big: expected a number"],
        ),
        (["--output=OUT/c4.h5"], ["--output=OUT/c4.h5: must end in .keras"]),
        (["--seed=-1"], ["flag --seed=-1"]),
    ],
)
def test_bad_settings_are_refused_before_anything(tmp_path, args, fragments):
    (tmp_path / "empty").mkdir()
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    fragments = [f.replace("OUT", str(tmp_path / "out")) for f in fragments]
    done = run(tmp_path, "--dataset=mnist", f"--data_dir={tmp_path / 'empty'}", *args)
    refused(done, *fragments)
    assert sorted(os.listdir(tmp_path)) == ["empty"] and not os.listdir(tmp_path / "empty")


def test_batch_larger_than_the_training_set_is_refused(tmp_path, fashion_test):
    """On real Fashion-MNIST: no empty epoch saved as a trained model."""
    done = run(tmp_path, "--batch_size=60001", f"--output={tmp_path}/out/c4.keras")
    refused(done, "--batch_size=60001: more than the 60000 training images")
    assert sorted(os.listdir(tmp_path)) == []

    from smoothadv_tf.models import train_c4

    with pytest.raises(ValueError, match="batch_size=11: need 1..10"):
        train_c4(fashion_test.images[:10], fashion_test.labels[:10], epochs=1, batch_size=11)
