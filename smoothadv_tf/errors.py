"""The project's error family for bad input, below everything else (no TensorFlow, no absl).

Every one of them is a ``ValueError`` whose message is one line naming the argument or file and the problem;
the scripts (:func:`smoothadv_tf.cli.run_script`) print it as ``<script>: error: <message>`` with exit status
2, and a Python caller can catch :class:`InputError` for all of them.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a data file, a checkpoint or a records file that cannot be used as it is."""


class MissingExtraError(ImportError):
    """An optional dependency (a pip extra: ``smoothadv_tf[art]``, ...) is not installed; the message names the
    ``pip install`` to run. The scripts print it as one line, exit status 2, as they do bad input."""


class ConfigError(InputError):
    """A run configuration (:class:`smoothadv_tf.config.RunConfig`, or the flags it is built from) that cannot
    run: a bad value or combination, an output folder holding another run, a device this machine lacks. The
    message names the setting by its flag (``--attacks``, ``--attack_params``, ...), which is also the name of
    the RunConfig field."""
