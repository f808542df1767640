"""The quiet start of TensorFlow (cli.quiet_tensorflow_start), on a stand-in `tensorflow` package that writes to
file descriptor 2 as TensorFlow's native libraries do: silent when the import works, everything shown when it
fails or aborts the process, descriptor 2 restored either way."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

FAKE_TENSORFLOW = """
import os
os.write(2, b"I0000 port.cc:153] native notice at import\\n")
if os.environ.get("FAKE_TF_ABORTS"):
    os.abort()  # as TensorFlow's own CPU check does on a CPU without the instructions it was built for
if os.environ.get("FAKE_TF_FAILS"):
    raise ImportError("the stand-in tensorflow cannot load")


class config:
    @staticmethod
    def list_physical_devices():
        os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: CUDA error\\n")
        if os.environ.get("FAKE_TF_DEVICES_FAIL"):
            raise RuntimeError("no platform")
        return []
"""

PROGRAM = """
import importlib.util, os, sys
from smoothadv_tf import cli
cli.quiet_tensorflow_start()
assert importlib.util.find_spec("tensorflow") is not None  # a look-up alone does not disarm the hook
import tensorflow
os.write(2, b"after the import\\n")
print(os.environ["TF_CPP_MIN_LOG_LEVEL"])
"""


def run(tmp_path, **env) -> subprocess.CompletedProcess:
    (tmp_path / "tensorflow").mkdir(exist_ok=True)
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    full = {**base, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT]), **env}
    return subprocess.run([sys.executable, "-c", PROGRAM], env=full, capture_output=True, text=True, timeout=60)


def test_notices_are_kept_off_the_terminal_and_stderr_comes_back(tmp_path):
    done = run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "after the import\n"  # neither notice; descriptor 2 restored
    assert done.stdout.strip() == "3"  # the level for later notices, where the user set none
    assert run(tmp_path, TF_CPP_MIN_LOG_LEVEL="1").stdout.strip() == "1"  # a level the user set is kept


def test_a_failing_import_shows_what_tensorflow_said(tmp_path):
    done = run(tmp_path, FAKE_TF_FAILS="1")
    assert done.returncode == 1
    assert (
        "native notice at import" in done.stderr and "ImportError: the stand-in tensorflow cannot load" in done.stderr
    )


def test_a_failing_device_listing_does_not_break_the_import(tmp_path):
    done = run(tmp_path, FAKE_TF_DEVICES_FAIL="1")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "after the import\n"


def test_an_abort_during_the_import_still_shows_what_tensorflow_said(tmp_path):
    done = run(tmp_path, FAKE_TF_ABORTS="1")
    assert done.returncode == -6  # SIGABRT
    assert "native notice at import" in done.stderr
