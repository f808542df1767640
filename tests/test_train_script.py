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
    ],
)
def test_default_output_is_the_cache_the_experiments_load(args, cache):
    path = ast.literal_eval(from_script("script.output_path()", *args))
    assert path == experiment.c4_cache_path(*cache)
    if cache[3] != 6:  # one epoch never lands on the standard 6-epoch model
        assert path != experiment.c4_cache_path(*cache[:3], 6)


def test_cache_hyperparameters_are_train_c4s_defaults():
    """The experiment scripts train their cache with train_c4's defaults: the script's idea of the cache's
    settings must be those."""
    from smoothadv_tf.models import train_c4

    cache = ast.literal_eval(from_script("script.CACHE_HYPERPARAMETERS"))
    defaults = {k: p.default for k, p in inspect.signature(train_c4).parameters.items()}
    assert cache == {k: defaults[k] for k in cache} and len(cache) == 4


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
            ["--adversarial_training", "--adversarial_epsilon=0.1", "--epochs=2"],
            ["--adversarial_epsilon=0.1 (the cache's: 0.3)", "c4_adv_mnist_seed0_epochs2.keras"],
        ),
        (["--adversarial_fraction=0.25"], ["--adversarial_fraction: only used with --adversarial_training"]),
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
