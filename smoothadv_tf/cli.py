"""What every script shares before TensorFlow is imported: the error type for bad input and ``run_script``.

Bad input (a flag, a data file, a checkpoint, a records file) is reported as one line on stderr naming the
argument or file and the problem, with exit status 2 — never a traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags


class InputError(ValueError):
    """Bad user input: a data file, a checkpoint or a records file that cannot be used as it is."""


def run_script(main) -> None:
    """``app.run(main)``, with flag-parsing errors (bad value, bound or enum, unknown flag), ``app.UsageError``
    and :class:`InputError` reported as one line on stderr and exit status 2 instead of absl's help text or a
    traceback (``--verbosity=1`` lets absl report errors raised in main as usual)."""
    FLAGS = flags.FLAGS

    def fail(error) -> None:
        sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {error}\n")
        sys.exit(2)

    def parse(argv):
        try:
            return FLAGS(argv)  # before any work
        except flags.Error as e:
            fail(e)

    def guarded(argv):
        try:
            return main(argv)
        except (app.UsageError, InputError) as e:
            if FLAGS.verbosity > 0:  # absl then prints its usage text for a UsageError, a traceback otherwise
                raise
            fail(e)

    app.run(guarded, flags_parser=parse)


def check_writable(flag: str, path: str) -> None:
    """Refuse (UsageError) an output path whose nearest existing ancestor is not a writable directory."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise app.UsageError(f"{flag}={path}: {existing} is not a writable directory")
