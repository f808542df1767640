"""Where the attacks run: the devices of one process (``tf.distribute``) and how many images fit on them.

``--devices`` names the devices (``GPU:0,GPU:1``; default: every visible GPU, else the CPU). Several devices
run the attacks under a :class:`tf.distribute.MirroredStrategy <tensorflow.distribute.MirroredStrategy>`:
each attack batch is split into one equal share per device and every attack loop (smoothing included) runs
per replica inside ``strategy.run`` (:mod:`smoothadv_tf.attacks`). Every image keeps its own state, so records
do not depend on the device count.
Naming CPU devices beyond ``CPU:0`` splits the CPU into that many logical devices — a way to exercise the
multi-device path on a machine without GPUs (it does not add cores).

Parsing (:func:`parse_devices`, in :mod:`smoothadv_tf.config`) is TensorFlow-free: the scripts check every flag
before importing TensorFlow.
"""

from __future__ import annotations

from smoothadv_tf.config import parse_devices  # noqa: F401 - the names --devices takes: a setting


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


_PLACEMENTS: dict = {}


def placement(names=()) -> tuple[list[str], object]:
    """(the devices the attacks run on, their tf.distribute strategy) for the devices named (e.g. ``["GPU:0",
    "GPU:1"]``; none: every visible GPU, else the CPU), made once per process and list. The strategy is None —
    TensorFlow's default placement — when no device is named and there is at most one, else a Mirrored
    (several) or OneDevice strategy. ValueError for a malformed name or a device this machine lacks."""
    key = tuple(parse_devices(names))
    if key not in _PLACEMENTS:
        found = configure(list(key))
        strategy = None if not key and len(found) == 1 else strategy_for(found)
        if strategy is not None:
            from absl import logging

            logging.info("attacks run on %s (%s)", ", ".join(found), type(strategy).__name__)
        _PLACEMENTS[key] = (found, strategy)
    return _PLACEMENTS[key]


# ---------------------------------------------------------------------------------------- memory per image
# Calibrated with scripts/bench_memory.py on slim InceptionV3, 299x299, CPU (docs/results.md, "Memory"): bytes
# one attacked image adds to the peak of an Adam step, as multiples of (a) the bytes of every tensor of the
# model's forward pass (activation_bytes: C&W measured 0.164 GiB per image against 0.156 GiB of forward
# tensors, so 1.05) and (b) one image: the autodiff CG trajectory holds one search direction per iteration and
# image (sC&W measured +0.054 GiB per image over C&W at 50 iterations; 50 x 4 x 299 x 299 x 3 bytes = 0.050
# GiB); the implicit gradient's adjoint solve needs a few image-sized vectors (measured: no growth over C&W's).
# On ResNetV2-50 the same factor over-estimates (0.312 against 0.216 GiB measured): the safe side.
ACTIVATION_FACTOR = 1.05
CG_AUTODIFF_IMAGES_PER_ITERATION = 1.0
# The dense ŝ_α (smoothing.Smoother, solver="dense") builds n x n matrices per image (n = pixels): the stencil
# applied to the identity, 𝒲, I - α𝒲 and its Cholesky factor (before issue #25 also an inverse and its
# normalised copy, when the peaks below were measured; tests/test_devices.py checks that the estimate still
# lies within 2.5 times the peak measured now). Measured peak resident memory of
# building it on this CPU (random 3-channel images, in units of one matrix, 4 n² bytes), oneDNN on / off:
# 48x48, B = 1: 10.6 / 11-16, B = 3: 24 / 18-19, B = 4: 36 / 25; 64x64, B = 1: 11.3 / 8.1, B = 4: 31 / 22. The
# peak depends on the kernels and on when the executor frees, so the estimate is their upper envelope (the safe
# side): 9 matrices per image and 12 per batch (tests/test_devices.py holds it between the measured peak and
# 2.5 times it).
DENSE_MATRICES_PER_IMAGE = 9.0
DENSE_MATRICES_PER_BATCH = 12.0
CG_IMPLICIT_IMAGES = 4.0
INCEPTION_V3_BYTES_PER_INPUT = 624.0  # activation_bytes(slim InceptionV3, (299, 299, 3)) / (299 * 299 * 3)


def activation_bytes(model, image_shape) -> int | None:
    """Bytes of every intermediate tensor of one forward pass on one image: the model traced once into a graph,
    the outputs of every op summed by their dtype's size (any floating dtype: a mixed-precision model's float16
    activations count half), weights left out (variable reads: they do not grow with the batch). None when the
    model hides its computation in a nested function call (a SavedModel), so that the graph does not show it."""
    import numpy as np
    import tensorflow as tf

    graph = tf.function(lambda x: model(x)).get_concrete_function(tf.TensorSpec([1, *image_shape], tf.float32)).graph
    total = 0
    for op in graph.get_operations():
        if op.type in ("StatefulPartitionedCall", "PartitionedCall"):
            return None
        if op.type in ("ReadVariableOp", "VarHandleOp", "Const", "Placeholder"):
            continue
        for t in op.outputs:
            if t.dtype.is_floating and t.shape.is_fully_defined():
                total += int(np.prod(t.shape)) * t.dtype.size
    return total


# Attacks that differentiate through the smoothing (the latent r = ŝ_α(z)); sPGD₂ smooths the gradient only.
DIFFERENTIATED_SMOOTHING = ("smooth_carlini_wagner_l2", "smooth_ddn", "smooth_fmn", "smooth_pgd2_latent")


def estimate_bytes_per_image(model, image_shape, attacks: dict, forward: int | None = None) -> dict:
    """Estimated peak bytes per attacked image for the most demanding of `attacks` ({name: params}): the model's
    forward + backward (ACTIVATION_FACTOR x :func:`activation_bytes`), plus, for an attack differentiating
    through a CG smoothing with ``cg_gradient="autodiff"``, its trajectory (one image per CG iteration), or for
    a dense smoothing its n x n matrices (DENSE_MATRICES_PER_IMAGE; "batch_fixed": the per-batch ones). A model
    whose graph hides its computation (a SavedModel) is costed at InceptionV3's activation bytes per input
    value. `forward` skips tracing the model when its activation bytes are known. Returns the parts and "total"."""
    import numpy as np

    from smoothadv_tf.presets import smoothing_applications
    from smoothadv_tf.smoothing import resolve_solver

    values = int(np.prod(image_shape))
    pixels = values // image_shape[-1]
    forward = activation_bytes(model, image_shape) if forward is None else forward
    if forward is None:
        forward = values * INCEPTION_V3_BYTES_PER_INPUT
    model_bytes = ACTIVATION_FACTOR * forward
    worst = {"model": model_bytes, "smoothing": 0.0, "batch_fixed": 0.0, "attack": None}
    for name, params in attacks.items():
        smoothing = fixed = 0.0
        solver = params.get("solver")
        graph = params.get("graph") or {}
        if solver == "auto":  # the attack's own choice for its solves, at a batch of one (where dense is likeliest)
            applications = smoothing_applications(name, params)
            mode = graph.get("mode", "joint")
            solver = resolve_solver((1, *image_shape), params.get("alpha", 0.95), applications, mode)[0]
        if solver == "chebyshev":  # no trajectory: a few image-sized vectors, and the rows' 2K coefficient arrays
            smoothing = 4 * values * (CG_IMPLICIT_IMAGES + graph.get("neighbors", 4))
        elif solver == "cg":
            autodiff = name in DIFFERENTIATED_SMOOTHING and params.get("cg_gradient", "autodiff") == "autodiff"
            images = (
                CG_AUTODIFF_IMAGES_PER_ITERATION * params.get("cg_iterations", 50) if autodiff else CG_IMPLICIT_IMAGES
            )
            smoothing = 4 * values * images
        elif solver == "dense":
            smoothing = 4 * pixels**2 * DENSE_MATRICES_PER_IMAGE
            fixed = 4 * pixels**2 * DENSE_MATRICES_PER_BATCH
        if worst["attack"] is None or smoothing > worst["smoothing"]:
            worst = {"model": model_bytes, "smoothing": smoothing, "batch_fixed": fixed, "attack": name}
    worst["total"] = worst["model"] + worst["smoothing"]
    return worst


def device_memory_bytes(name: str, sharing: int = 1) -> tuple[int, str]:
    """Bytes one device offers the attacks, and where the number comes from: TensorFlow's memory limit for a GPU
    (what its allocator may use); for the CPU the memory Linux reports available now, split between the
    `sharing` logical CPU devices that share it."""
    import os

    if name.startswith("GPU"):
        from tensorflow.python.client import device_lib  # the only API that reports a GPU's memory limit

        for device in device_lib.list_local_devices():
            if device.device_type == "GPU" and device.name.endswith(f"GPU:{name.split(':')[1]}"):
                return int(device.memory_limit), f"TensorFlow's memory limit on {name}"
        raise ValueError(f"{name}: no such GPU")
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available, source = int(fields["MemAvailable"].split()[0]) * 1024, "the memory available now"
    except (OSError, KeyError, ValueError):
        available, source = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the physical memory"
    if sharing > 1:
        return available // sharing, f"{source}, split between {sharing} logical CPU devices"
    return available, source


def weight_bytes(model) -> int:
    """Bytes of the model's weights (float32 assumed where unknown)."""
    import numpy as np

    return int(sum(np.prod(w.shape) * 4 for w in getattr(model, "weights", [])))


def choose_batch_size(model, image_shape, attacks: dict, budget_bytes: float, replicas: int = 1) -> tuple[int, str]:
    """The largest batch whose estimated peak fits `budget_bytes` per device (the model's weights taken
    off first), times the number of replicas; and a sentence saying why (and what the implicit gradient of the
    smoothing would allow, when that is larger)."""
    forward = activation_bytes(model, image_shape)  # traced once, used by both estimates below
    estimate = estimate_bytes_per_image(model, image_shape, attacks, forward)
    weights = weight_bytes(model)
    room = budget_bytes - weights - estimate["batch_fixed"]

    def fit(per_image: float) -> int:
        return max(1, int(room // per_image)) * replicas

    batch = fit(estimate["total"])
    gib = 2**30
    why = (
        f"≈{estimate['total'] / gib:.2f} GiB per image (the model's forward + backward "
        f"≈{estimate['model'] / gib:.2f} GiB"
    )
    if estimate["smoothing"]:
        why += f", {estimate['attack']}'s smoothing ≈{estimate['smoothing'] / gib:.2f} GiB"
    if room <= 0:
        fixed = estimate["batch_fixed"]
        what = f"the model's weights ({weights / gib:.2f} GiB)" + (
            f" and the dense smoothing's per-batch matrices ({fixed / gib:.2f} GiB)" if fixed else ""
        )
        why += f") — the budget ({budget_bytes / gib:.2f} GiB) is smaller than {what}: running 1 per device anyway"
    else:
        after = " and the dense smoothing's per-batch matrices" if estimate["batch_fixed"] else ""
        why += f") in {room / gib:.2f} GiB per device after the weights{after}"
        if room < estimate["total"]:
            why += " — the budget is smaller than one image: running 1 per device anyway"
    worst = attacks.get(estimate["attack"]) or {}
    if estimate["attack"] in DIFFERENTIATED_SMOOTHING and worst.get("cg_gradient", "autodiff") == "autodiff":
        implicit = {name: {**p, "cg_gradient": "implicit"} for name, p in attacks.items()}
        other = fit(estimate_bytes_per_image(model, image_shape, implicit, forward)["total"])
        if other > batch:
            why += (
                f"; the implicit gradient (--attack_params=cg_gradient=implicit: the exact solve's gradient, "
                f"memory independent of the CG iterations) would allow {other}"
            )
    return batch, why
