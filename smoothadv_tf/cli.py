"""What every script shares before TensorFlow is imported: ``run_script`` (which reports the
:mod:`smoothadv_tf.errors` family and flag errors as one line) and the quiet start of TensorFlow.

Bad input (a flag, a data file, a checkpoint, a records file) is reported as one line on stderr naming the
argument or file and the problem, with exit status 2 — never a traceback, and never behind TensorFlow's
start-up notices.

Why the notices need more than ``TF_CPP_MIN_LOG_LEVEL`` (TensorFlow 2.21): its native libraries log through
absl, and what they log while they load — before anything calls ``absl::InitializeLog()`` — is written straight
to file descriptor 2 whatever the variable says (``port.cc``'s oneDNN notice, ``cudart_stub.cc``,
``cpu_feature_guard.cc``; measured: present with ``TF_CPP_MIN_LOG_LEVEL=3``). Platform start-up then logs
``failed call to cuInit: ... CUDA error`` on machines with CUDA libraries and no GPU. So a script, unless asked
for ``--verbosity`` >= 1, points descriptor 2 at a pipe held by a small child process while ``tensorflow`` is
imported and its platforms are listed (what it said is shown if that fails, even by an abort of the process),
and sets ``TF_CPP_MIN_LOG_LEVEL=3`` where the user has not set it (the later notices, e.g. XLA's, honour it).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import subprocess
import sys

from absl import app, flags

from smoothadv_tf.config import check_writable  # noqa: F401 - re-exported: it was defined here before the split
from smoothadv_tf.errors import InputError, MissingExtraError


def run_script(main) -> None:
    """``app.run(main)``, with flag-parsing errors (bad value, bound or enum, unknown flag), ``app.UsageError``
    and :class:`InputError` reported as one line on stderr and exit status 2 instead of absl's help text or a
    traceback; TensorFlow starts quietly (:func:`quiet_tensorflow_start`). ``--verbosity=1`` shows TensorFlow's
    start-up notices and lets absl report errors raised in main as usual."""
    FLAGS = flags.FLAGS

    def fail(error) -> None:
        sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {error}\n")
        sys.exit(2)

    def parse(argv):
        try:
            rest = FLAGS(argv)  # before any work
        except flags.Error as e:
            fail(e)
        if FLAGS.verbosity <= 0:
            quiet_tensorflow_start()
        return rest

    def guarded(argv):
        try:
            return main(argv)
        except (app.UsageError, InputError, MissingExtraError) as e:
            if FLAGS.verbosity > 0:  # absl then prints its usage text for a UsageError, a traceback otherwise
                raise
            fail(e)

    app.run(guarded, flags_parser=parse)


# The marker a successful window ends with: what came before it is dropped, anything after it is shown.
_QUIET_OK = b"\n\x00smoothadv_tf: tensorflow started\x00\n"
# Holds what native code writes while TensorFlow starts, and prints it to the real stderr unless the window
# ends well: a child process, so that an abort of this one (TensorFlow's own CPU check aborts) still shows why.
_HOLDER = (
    f"import sys; data = sys.stdin.buffer.read(); head, ok, tail = data.partition({_QUIET_OK!r}); "
    "sys.stderr.buffer.write(tail if ok else head)"
)


@contextlib.contextmanager
def native_stderr_silenced():
    """Hold what is written to file descriptor 2 for the duration; shown after all if the body raises or the
    process dies meanwhile (it may say why), dropped if the body completes."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    holder = subprocess.Popen(  # -I -S: no site or sitecustomize of the environment, just this program
        [sys.executable, "-I", "-S", "-c", _HOLDER], stdin=read_end, stdout=subprocess.DEVNULL, stderr=saved
    )
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
        sys.stderr.flush()
        os.write(2, _QUIET_OK)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the holder reads to its end and exits
        os.close(saved)
        holder.wait()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Import finder that runs the first ``import tensorflow`` (and the listing of its platforms, which starts
    them) inside :func:`native_stderr_silenced`, then steps aside (from ``exec_module``: ``find_spec`` may be
    asked without an import following, and must not change ``sys.meta_path`` while Python walks it)."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            with native_stderr_silenced():
                run_module(module)
                try:  # platform start-up (cuInit) while still silenced; devices stay configurable
                    module.config.list_physical_devices()
                except Exception:  # noqa: BLE001 - not this hook's to report: the scripts' device checks will
                    pass

        spec.loader.exec_module = exec_module
        return spec


def quiet_tensorflow_start() -> None:
    """Keep TensorFlow's start-up notices off the terminal for this process (see the module docstring). Has no
    effect once TensorFlow is imported: scripts import it only after their flags are checked."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
