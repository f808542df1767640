"""Where the attacks run: the devices of one process (``tf.distribute``) and how many images fit on them.

``--devices`` names the devices (``GPU:0,GPU:1``; default: every visible GPU, else the CPU). Several devices
run the attacks under a :class:`tf.distribute.MirroredStrategy`: each attack batch is split into one equal
share per device and every attack loop (smoothing included) runs per replica inside ``strategy.run``
(:mod:`smoothadv_tf.attacks`). Every image keeps its own state, so records do not depend on the device count.
Naming CPU devices beyond ``CPU:0`` splits the CPU into that many logical devices — a way to exercise the
multi-device path on a machine without GPUs (it does not add cores).

Parsing is TensorFlow-free (the scripts check every flag before importing TensorFlow).
"""

from __future__ import annotations

import re

_DEVICE = re.compile(r"^(?:/(?:device:)?)?(cpu|gpu):(\d+)$", re.IGNORECASE)


def parse_devices(items) -> list[str]:
    """``["gpu:0", "/device:GPU:1"]`` -> ``["GPU:0", "GPU:1"]``; ValueError for a malformed, repeated or mixed list."""
    names = []
    for item in items:
        match = _DEVICE.match(item.strip())
        if not match:
            raise ValueError(f"{item!r} is not a device name (expected e.g. GPU:0 or CPU:0)")
        names.append(f"{match.group(1).upper()}:{int(match.group(2))}")
    if len(set(names)) != len(names):
        raise ValueError(f"{','.join(names)}: a device is named twice")
    if len({n.split(":")[0] for n in names}) > 1:
        raise ValueError(f"{','.join(names)}: name GPUs or CPUs, not both")
    return names


def configure(names: list[str]) -> list[str]:
    """Make the named devices exist (splitting the CPU into logical devices if CPU:k, k > 0, is named) and return
    their logical names; with no names, every visible GPU, else ``["CPU:0"]``. Call before TensorFlow runs
    anything. ValueError when a named device does not exist."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not names:
        return [f"GPU:{i}" for i in range(len(gpus))] or ["CPU:0"]
    kind = names[0].split(":")[0]
    wanted = max(int(n.split(":")[1]) for n in names) + 1
    if kind == "CPU" and wanted > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        current = tf.config.get_logical_device_configuration(cpu)
        if current is None or len(current) < wanted:
            try:
                tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * wanted)
            except RuntimeError as e:  # TensorFlow has already initialised its devices
                raise ValueError(f"{','.join(names)}: cannot split the CPU now ({e})") from e
    present = {d.name.split("device:")[-1] for d in tf.config.list_logical_devices(kind)}
    missing = [n for n in names if n not in present]
    if missing:
        have = ", ".join(sorted(present)) or f"no {kind}"
        raise ValueError(f"{','.join(missing)}: no such device here (this process sees {have})")
    return names


def strategy_for(names: list[str]):
    """A MirroredStrategy over several devices, a OneDeviceStrategy for one named device."""
    import tensorflow as tf

    if len(names) == 1:
        return tf.distribute.OneDeviceStrategy(f"/{names[0].lower()}")
    return tf.distribute.MirroredStrategy([f"/{n.lower()}" for n in names])
