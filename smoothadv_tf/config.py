"""One experiment run's configuration, checked before anything is loaded: :class:`RunConfig`, TensorFlow-free.

A run is what ``scripts/white_box.py`` and its siblings do: attack the first ``num_images`` images of a dataset
with a list of attacks and record every outcome under ``<output_dir>/<experiment>/<dataset>-<model>/<protocol>/``
(:mod:`smoothadv_tf.runner`). The scripts build their RunConfig from their flags in one place
(:func:`smoothadv_tf.experiment.config_from_flags`); a Python caller builds one directly. Every field has the
name and meaning of the flag of the same name, and a bad value is refused on construction with a
:class:`~smoothadv_tf.errors.ConfigError` naming that flag.

Also here, because the flags are checked against them before TensorFlow is imported: the model sources
(:data:`MODEL_NAMES`, :data:`KERAS_APPLICATIONS`) and the parameter sets each attack runs with in an
experiment (:func:`attack_runs`: one per target ε for the distortion-targeting attacks, §5.1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
from collections.abc import Mapping, Sequence

from smoothadv_tf import presets
from smoothadv_tf.errors import ConfigError

DATASETS = ("mnist", "fashion_mnist", "nips17", "folder")
MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
MODEL_NAMES = ("c4", "c4_adv", "inception_v3", "adv_inception_v3", "resnet_v2_50")
# keras.applications classifiers and their input sides (= models.APPLICATIONS, without importing TensorFlow)
KERAS_APPLICATIONS = {"InceptionV3": 299, "ResNet50": 224, "MobileNetV2": 224, "EfficientNetB0": 224}
C4_MODELS = ("c4", "c4_adv")
DEFAULT_C4_EPOCHS = 6

DISTORTION_TARGETING = ("fgsm", "ifgsm", "pgd2", "smooth_pgd2", "smooth_pgd2_latent")
# Target lists per preset (ε of each run). MNIST PGD₂ uses D in [1, 6] as the paper's Fig. 2.
TARGETS = {
    "mnist": {
        "fgsm": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
        "ifgsm": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
        "pgd2": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "smooth_pgd2": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "smooth_pgd2_latent": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    },
    "imagenet": {
        "fgsm": [0.02, 0.04, 0.06, 0.08, 0.1, 0.1255],
        "ifgsm": [0.02, 0.04, 0.06, 0.08, 0.1, 0.1255],
        "pgd2": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "smooth_pgd2": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "smooth_pgd2_latent": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    },
}


# ------------------------------------------------------------------------------------------ model sources
def model_problem(value: str) -> str | None:
    """Why a --model value is not a model this project can load (None if it is)."""
    kind, sep, rest = value.partition(":")
    if not sep:
        return (
            None if value in MODEL_NAMES else f"expected one of {list(MODEL_NAMES)}, keras:<Name> or savedmodel:<dir>"
        )
    if kind == "keras":
        return None if rest in KERAS_APPLICATIONS else f"keras:<Name> with Name in {list(KERAS_APPLICATIONS)}"
    if kind == "savedmodel":
        return None if os.path.isdir(rest) else f"savedmodel:<dir>: {rest!r} is not a directory"
    return f"unknown model source {kind!r}: expected keras:<Name> or savedmodel:<dir>"


def canonical_model(value: str) -> str:
    """The --model value as recorded in the run identity (a SavedModel by its absolute path)."""
    kind, sep, rest = value.partition(":")
    return f"savedmodel:{os.path.abspath(rest)}" if kind == "savedmodel" and sep else value


def model_tag(value: str) -> str:
    """The --model value as a folder name: keras:ResNet50 -> keras-ResNet50, savedmodel:/a/b -> savedmodel-b-<hash>."""
    import hashlib

    kind, sep, rest = value.partition(":")
    if not sep:
        return value
    if kind == "savedmodel":  # the folder name plus a hash of the absolute path: .../a/1 and .../b/1 differ
        path = os.path.abspath(rest)
        return f"savedmodel-{os.path.basename(path)}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    return f"{kind}-{rest}"


def image_size_for(model: str) -> int:
    """The side photo folders are resized to for `model`: a keras model's own input side, else 299."""
    kind, _, name = model.partition(":")
    return KERAS_APPLICATIONS[name] if kind == "keras" else 299


def output_path(output_dir: str, experiment: str, dataset: str, model: str, protocol: str) -> str:
    """The folder of a run: ``<output_dir>/<experiment>/<dataset>-<model tag>/<protocol>``."""
    return os.path.join(output_dir, experiment, f"{dataset}-{model_tag(model)}", protocol)


def c4_cache_path(
    name: str, dataset: str, seed: int, epochs: int = DEFAULT_C4_EPOCHS, train_attack: str | None = None,
    train_params: Mapping | None = None,
) -> str:  # fmt: skip
    """Where a C4 trained here is cached: one file per dataset, training mode (c4 / c4_adv), training attack and
    budget, seed and epochs. The paper's step l.l at its preset keeps the plain ``c4_adv`` name; another
    training attack adds its name, a budget other than its preset a hash of it."""
    suffix = "" if epochs == DEFAULT_C4_EPOCHS else f"_epochs{epochs}"
    if name == "c4_adv":
        attack = train_attack or DEFAULT_TRAIN_ATTACK
        preset = presets.TRAINING_PRESETS[presets.training_dataset(dataset)][attack]
        options = presets.training_options(attack)
        # typed as the options are, so that epsilon=2 and epsilon=2.0 name one file
        params = {**preset, **{k: options.get(k, type(v))(v) for k, v in (train_params or {}).items()}}
        if attack != DEFAULT_TRAIN_ATTACK:
            name += f"_{attack}"
        if params != preset:
            digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
            name += f"_{digest}"
    return os.path.join(MODELS_DIR, f"{name}_{dataset}_seed{seed}{suffix}.keras")


DEFAULT_TRAIN_ATTACK = "step_ll"  # the paper's adversarially trained models (§5.3)


def parse_train_params(items: Sequence[str], attack: str) -> dict:
    """``["epsilon=2", "iterations=7"]`` -> typed overrides of training attack `attack`'s budget (each value
    typed as :func:`~smoothadv_tf.presets.training_options` says); ConfigError for an item that is not
    key=value or an option `attack` does not take."""
    options = presets.training_options(attack)
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--train_params: {item!r} is not key=value")
        if key not in options:
            raise ConfigError(
                f"--train_params: {key}: --train_attack={attack} takes no such option ({sorted(options)})"
            )
        try:
            out[key] = _parse_param(key, text, options[key])
        except ConfigError as e:
            raise ConfigError(str(e).replace("--attack_params", "--train_params")) from None
    return out


def check_training_target(model: str, checkpoint: str | None, given: str) -> None:
    """--train_attack / --train_params (`given`) only for the adversarially trained C4 trained here."""
    if model != "c4_adv" or checkpoint:
        raise ConfigError(
            f"{given}: only for --model=c4_adv trained here (no --checkpoint); the model is {model}"
            + (f" from {checkpoint}" if checkpoint else "")
        )


def check_c4_file(flag: str, path: str | None, model: str) -> None:
    """A given C4 checkpoint must be an existing file (checked before anything is loaded)."""
    if path is not None and model in C4_MODELS and not os.path.isfile(path):
        raise ConfigError(f"{flag}={path}: no such file")


def check_writable(flag: str, path: str) -> None:
    """Refuse (ConfigError) an output path whose nearest existing ancestor is not a writable directory."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}={path}: {existing} is not a writable directory")


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


# ------------------------------------------------------------------------------------------- attack runs
def default_preset(dataset: str) -> str:
    """The §5.2 parameter preset of a dataset: "mnist" for the 28x28 ones, "imagenet" for the photos."""
    return "mnist" if dataset in ("mnist", "fashion_mnist") else "imagenet"


def attack_runs(
    attack: str,
    preset: str,
    single_run: bool = False,
    overrides: dict | None = None,
    protocol: str = presets.DEFAULT_PROTOCOL,
) -> list[dict]:
    """The parameter sets one attack runs with under `protocol`: one per target ε, or the preset alone.
    `overrides` (e.g. ``{"iterations": 20}``) apply to every attack that takes the parameter
    (presets.overrides_for); an ε this attack takes disables the sweep."""
    taken = presets.overrides_for(attack, overrides or {})  # under the attack's own names (epsilon_linf -> epsilon)
    params = presets.preset(preset, attack, protocol, **taken)
    if attack not in DISTORTION_TARGETING or single_run or "epsilon" in taken:
        return [params]
    return [{**params, "epsilon": eps} for eps in TARGETS[preset][attack]]


def check_attacks(names: Sequence[str]) -> list[str]:
    """The attack names as a list, or ConfigError for an empty list or an unknown name."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ConfigError(f"--attacks: empty; expected names from {list(presets.ATTACK_NAMES)}")
    unknown = [a for a in names if a not in presets.ATTACK_NAMES]
    if unknown:
        raise ConfigError(f"--attacks: unknown {unknown}; expected names from {list(presets.ATTACK_NAMES)}")
    return list(names)


def _takers(attacks: Sequence[str], key: str) -> list[str]:
    takers = [a for a in attacks if presets.override_type(a, key) is not None]
    if not takers:
        raise ConfigError(f"--attack_params: {key}: none of the selected attacks {list(attacks)} takes it")
    return takers


def parse_attack_params(items: Sequence[str], attacks: Sequence[str]) -> dict:
    """``["iterations=20", "abort_early=true"]`` -> ``{"iterations": 20, "abort_early": True}``: each value typed
    as the selected attacks that take the key expect (int, float, true/false, or a string choice); ConfigError
    for an item that is not key=value, a key none of `attacks` takes, or a value of the wrong type."""
    selected = check_attacks(attacks)
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--attack_params: {item!r} is not key=value")
        out[key] = _parse_param(key, text, presets.override_type(_takers(selected, key)[0], key))
    return out


def _parse_param(key: str, text: str, expected: type):
    try:
        if expected is bool:
            return {"true": True, "false": False}[text.lower()]
        if expected is int:
            return int(text)
        if expected is float:
            return float(text)
        return text
    except (KeyError, ValueError):
        kind = {bool: "true or false", int: "an integer", float: "a number"}[expected]
        raise ConfigError(f"--attack_params: {key}={text}: expected {kind}") from None


def check_attack_params(attacks: Sequence[str], params: Mapping, preset: str, protocol: str) -> None:
    """Refuse (ConfigError) overrides none of `attacks` takes, epsilon / step keys whose norm is ambiguous for
    the selection (presets.check_override_keys), and values out of range for any run (presets.check_params)."""
    for key in params:
        _takers(attacks, key)
    try:  # epsilon / step mean an L∞ size to FGSM and I-FGSM, an L2 size to the PGD₂ family
        presets.check_override_keys(list(attacks), dict(params))
        for attack in attacks:
            for run in attack_runs(attack, preset, False, dict(params), protocol):
                presets.check_params(attack, run)
    except ValueError as e:
        raise ConfigError(f"--attack_params: {e}") from None


# ---------------------------------------------------------------------------------------------- RunConfig
@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run is made from, each field as the flag of the same name (``scripts/white_box.py
    --helpfull``). Checked on construction: a value or combination that cannot run raises ConfigError naming
    the flag, before any data or model is loaded.

    ``attack_params`` holds typed overrides of the preset (``{"iterations": 20}``; the flag's ``key=value``
    strings go through :func:`parse_attack_params`); ``shard_index`` is this process's shard (the scripts also
    take it from a scheduler's task index)."""

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    model: str = "c4"
    checkpoint: str | None = None
    attacks: tuple[str, ...] = presets.PAPER_ATTACKS
    preset: str | None = None
    protocol: str = presets.DEFAULT_PROTOCOL
    num_images: int = 1000
    batch_size: int | None = None
    memory_budget_gb: float | None = None
    output_dir: str = "results"
    num_shards: int = 1
    shard_index: int = 0
    seed: int = 0
    c4_epochs: int = DEFAULT_C4_EPOCHS
    devices: tuple[str, ...] = ()
    attack_params: Mapping = dataclasses.field(default_factory=dict)
    train_attack: str | None = None
    train_params: Mapping = dataclasses.field(default_factory=dict)
    tensorboard: bool = True
    tensorboard_dir: str | None = None
    trace_iterations: bool = False

    def __post_init__(self):
        # frozen: normalised once, here (lists or one name for the tuples; a read-only copy of the overrides,
        # so that a checked config cannot be changed afterwards)
        object.__setattr__(self, "attacks", tuple(check_attacks(self.attacks)))
        devices = [self.devices] if isinstance(self.devices, str) else self.devices
        object.__setattr__(self, "devices", tuple(devices))
        object.__setattr__(self, "attack_params", types.MappingProxyType(dict(self.attack_params)))
        object.__setattr__(self, "train_params", types.MappingProxyType(dict(self.train_params)))
        self._check_values()
        self._check_combinations()

    def _check_values(self) -> None:
        """What the flags' own parsers check (enums, bounds, the model and device syntax)."""
        for name, value, allowed in (
            ("dataset", self.dataset, DATASETS),
            ("preset", self.preset, (None, *presets.PRESETS)),
            ("protocol", self.protocol, tuple(presets.PROTOCOLS)),
        ):
            if value not in allowed:
                raise ConfigError(f"--{name}={value}: expected one of {[a for a in allowed if a is not None]}")
        problem = model_problem(self.model)
        if problem:
            raise ConfigError(f"--model={self.model}: {problem}")
        integers = (("num_images", 1), ("num_shards", 1), ("shard_index", 0), ("seed", 0), ("c4_epochs", 1))
        for name, lower in integers + (("batch_size", 1),) * (self.batch_size is not None):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < lower:
                raise ConfigError(f"--{name}={value!r}: expected an integer >= {lower}")
        budget = self.memory_budget_gb
        if budget is not None and not (
            isinstance(budget, int | float) and not isinstance(budget, bool) and budget >= 0.01
        ):
            raise ConfigError(f"--memory_budget_gb={budget!r}: expected a number >= 0.01")
        try:
            parse_devices(self.devices)
        except ValueError as e:
            raise ConfigError(f"--devices={','.join(self.devices)}: {e}") from None

    def _check_combinations(self) -> None:
        """What needs several fields or the file system (the scripts' flag validation, in its order)."""
        if not self.shard_index < self.num_shards:
            raise ConfigError(
                f"--num_shards={self.num_shards}, --shard_index={self.shard_index}: need 0 <= index < shards"
            )
        check_attack_params(self.attacks, self.attack_params, self.preset_name, self.protocol)
        if self.model in C4_MODELS and self.dataset not in ("mnist", "fashion_mnist") and not self.checkpoint:
            raise ConfigError(
                f"--model={self.model} --dataset={self.dataset}: a C4 is trained here only on mnist / "
                "fashion_mnist; pass --checkpoint with a model for these images"
            )
        if self.dataset in ("nips17", "folder") and self.data_dir is None:
            raise ConfigError(f"--dataset={self.dataset} needs --data_dir")
        self._check_training()
        self._check_tensorboard()
        check_writable("--output_dir", self.output_dir)
        check_c4_file("--checkpoint", self.checkpoint, self.model)
        kind, _, name = self.model.partition(":")
        if kind == "keras" and self.dataset == "nips17" and KERAS_APPLICATIONS[name] != 299:
            raise ConfigError(
                f"--dataset=nips17 holds 299x299 images and --model={self.model} takes "
                f"{KERAS_APPLICATIONS[name]}x{KERAS_APPLICATIONS[name]}: use --dataset=folder (resized) or a 299 model"
            )
        if kind == "keras" and self.checkpoint and not os.path.isfile(self.checkpoint):
            raise ConfigError(f"--checkpoint={self.checkpoint}: no such weights file for --model={self.model}")
        if self.data_dir is not None and not os.path.isdir(self.data_dir):  # the files in it: when it is read
            raise ConfigError(f"--data_dir={self.data_dir}: no such directory")

    def _check_training(self) -> None:
        """--train_attack / --train_params: only for the adversarially trained C4 trained here, a known attack
        and a budget in its domain (presets.training_params)."""
        if self.train_attack is None and not self.train_params:
            return
        check_training_target(
            self.model, self.checkpoint, "--train_attack" if self.train_attack is not None else "--train_params"
        )
        attack = self.train_attack or DEFAULT_TRAIN_ATTACK
        if attack not in presets.TRAIN_ATTACKS:
            raise ConfigError(f"--train_attack={attack}: expected one of {list(presets.TRAIN_ATTACKS)}")
        try:
            presets.training_params(attack, self.dataset, **self.train_params)
        except ValueError as e:
            raise ConfigError(f"--train_params: {e}") from None

    def _check_tensorboard(self) -> None:
        """--tensorboard / --tensorboard_dir / --trace_iterations: booleans, a folder that can be written, and
        nothing asked of TensorBoard events that --notensorboard would then not write."""
        for name in ("tensorboard", "trace_iterations"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"--{name}={getattr(self, name)!r}: expected True or False")
        if not self.tensorboard:
            asked = [f"--{n}" for n in ("tensorboard_dir", "trace_iterations") if getattr(self, n)]
            if asked:
                raise ConfigError(f"{', '.join(asked)}: TensorBoard output, but --notensorboard is given")
        if self.tensorboard_dir is not None:
            if not isinstance(self.tensorboard_dir, str) or not self.tensorboard_dir:
                raise ConfigError(f"--tensorboard_dir={self.tensorboard_dir!r}: expected a folder name")
            if os.path.exists(self.tensorboard_dir) and not os.path.isdir(self.tensorboard_dir):
                raise ConfigError(f"--tensorboard_dir={self.tensorboard_dir}: exists and is not a directory")
            check_writable("--tensorboard_dir", self.tensorboard_dir)
        if self.trace_iterations and not set(self.attacks) & set(presets.TRACEABLE_ATTACKS):
            raise ConfigError(
                f"--trace_iterations: none of --attacks={','.join(self.attacks)} is traced per iteration "
                f"(those that are: {', '.join(presets.TRACEABLE_ATTACKS)})"
            )

    # ------------------------------------------------------------------------------------ derived values
    @property
    def training(self) -> dict | None:
        """How the attacked C4 is trained here (attack and full budget), for c4_adv without a checkpoint."""
        if self.model != "c4_adv" or self.checkpoint:
            return None
        attack = self.train_attack or DEFAULT_TRAIN_ATTACK
        return {"attack": attack, "params": presets.training_params(attack, self.dataset, **self.train_params)}

    @property
    def preset_name(self) -> str:
        """--preset, else the dataset's (:func:`default_preset`)."""
        return self.preset or default_preset(self.dataset)

    @property
    def image_size(self) -> int:
        """The side photo folders are resized to (:func:`image_size_for`)."""
        return image_size_for(self.model)

    def overrides(self, defaults: Mapping | None = None) -> dict:
        """An experiment's own parameter `defaults` under ``attack_params`` (which wins)."""
        return {**(defaults or {}), **self.attack_params}

    def attack_runs(self, attack: str, single_run: bool = False, defaults: Mapping | None = None) -> list[dict]:
        """The parameter sets `attack` runs with in this run (:func:`attack_runs`)."""
        return attack_runs(attack, self.preset_name, single_run, self.overrides(defaults), self.protocol)

    def output_path(self, experiment: str) -> str:
        """``<output_dir>/<experiment>/<dataset>-<model tag>/<protocol>``: the folder of this run."""
        return output_path(self.output_dir, experiment, self.dataset, self.model, self.protocol)

    def tensorboard_path(self, out_dir: str) -> str | None:
        """Where the run in `out_dir` writes its TensorBoard events (:mod:`smoothadv_tf.tensorboard_log`):
        ``<out_dir>/tb``, or with --tensorboard_dir the run's own place under it (`out_dir` relative to
        --output_dir: ``<tensorboard_dir>/white_box/<dataset>-<model>/<protocol>``, so runs sharing one
        --tensorboard_dir never overwrite each other); None with --notensorboard."""
        if not self.tensorboard:
            return None
        if self.tensorboard_dir is None:
            return os.path.join(out_dir, "tb")
        return os.path.join(self.tensorboard_dir, os.path.relpath(out_dir, self.output_dir))

    def records_path(self, out_dir: str) -> str:
        """This process's records file in `out_dir`: records.jsonl, or its shard's file."""
        if self.num_shards == 1:
            return os.path.join(out_dir, "records.jsonl")
        return os.path.join(out_dir, f"records-shard{self.shard_index:04d}-of-{self.num_shards:04d}.jsonl")

    def replace(self, **changes) -> RunConfig:
        """A copy with `changes`, checked again."""
        return dataclasses.replace(self, **changes)
