"""Makes a Python process as loud as TensorFlow gets on other machines (tests only: on the subprocess's
PYTHONPATH through conftest.LOUD_ENV).

- At interpreter start-up, one line like TensorFlow's notices (STARTUP_NOTICE): a test that judges a script by
  loose words ('error', 'rror') sees it; a script cannot hide it, so tests discount exactly this line.
- When TensorFlow's native layer is imported (``tensorflow.python``), another such line (IMPORT_NOTICE) written
  to file descriptor 2 as native code writes: the scripts must keep it off the terminal, as they do TensorFlow's.
  If $LOUD_TF_IMPORT_MARKER names a file, it is created then: a test can tell whether TensorFlow was imported.
"""

import importlib.abc
import os
import sys

STARTUP_NOTICE = (
    "E0000 00:00:1700000000.000000    1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "injected at start-up by tests/loud/sitecustomize.py (slightly different numerical results due to "
    "floating-point round-off errors)"
)
IMPORT_NOTICE = (
    "I0000 00:00:1700000000.000001    1 port.cc:153] oneDNN custom operations are on: injected at TensorFlow's "
    "import by tests/loud/sitecustomize.py (round-off errors; CUDA error)"
)


class _NoticeOnTensorFlowImport(importlib.abc.MetaPathFinder):
    written = False

    def find_spec(self, name, path, target=None):
        if name == "tensorflow.python" and not self.written:  # (sys.meta_path is not changed while it is walked)
            self.written = True
            os.write(2, (IMPORT_NOTICE + "\n").encode())
            if os.environ.get("LOUD_TF_IMPORT_MARKER"):
                open(os.environ["LOUD_TF_IMPORT_MARKER"], "w").close()
        return None  # the real finders import it


os.write(2, (STARTUP_NOTICE + "\n").encode())
sys.meta_path.insert(0, _NoticeOnTensorFlowImport())
