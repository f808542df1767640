"""Running an experiment from Python (RunConfig + runner) gives the script's records, and the library's module
layout holds: absl's FLAGS read only by the flag layer, no import cycle, no module importing one above it."""

import ast
import dataclasses
import json
import os
import re

import pytest
from conftest import ROOT, run_script

from smoothadv_tf import records as records_lib
from smoothadv_tf.config import RunConfig
from smoothadv_tf.errors import ConfigError, InputError

PACKAGE = os.path.join(ROOT, "smoothadv_tf")
FLAG_LAYER = ("smoothadv_tf.experiment", "smoothadv_tf.cli")
# The library's layers, lowest first: a module imports only modules of its own layer or below (README of the
# layout: WORKSPACE.md, "Library modules").
LAYERS = [
    {"errors", "presets", "numerics", "perceptibility"},
    {"config", "data", "graph"},
    {"smoothing", "filters"},
    {"devices", "layers", "magnify", "attacks.common", "attacks.latent"},
    {"attacks.gradient", "attacks.optimality", "attacks.minimum_norm"},
    {"attacks", "training"},  # a package's __init__ sits above the modules it gathers; training runs their loops
    {"integrations.common"},
    {"integrations", "integrations.art", "integrations.foolbox"},  # the toolboxes' attacks run the library's
    {"models.wrap", "models.applications", "models.c4", "models.slim"},
    {"models", "models.loading"},
    {"records", "statistics"},
    {"tensorboard_log"},
    {"report"},
    {"runner"},
    {"evaluation", "cli"},
    {"experiment"},
]


def _modules(package: str = PACKAGE) -> dict:
    """{dotted name: path} of every module of the package."""
    found = {}
    root = os.path.dirname(package)
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), root)[: -len(".py")].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = os.path.join(folder, name)
    return found


def _imports(path: str, modules: dict) -> set:
    """The package's modules `path` imports anywhere (function-level imports included), with the packages an
    import of a submodule runs."""
    inside = next(name for name, p in modules.items() if p == path)
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # from . import x, from ..records import y: relative to the importing package
                package = inside.split(".") if path.endswith("__init__.py") else inside.split(".")[:-1]
                module = ".".join(package[: len(package) - node.level + 1] + ([module] if module else []))
            if module.startswith("smoothadv_tf"):
                names = [module] + [f"{module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for k in range(2, len(parts) + 1):  # smoothadv_tf.models.slim runs smoothadv_tf.models first,
                prefix = ".".join(parts[:k])  # unless the import is made inside that package
                if prefix in modules and (k == len(parts) or not inside.startswith(prefix + ".")):
                    out.add(prefix)
    return out


def layout_problems(package: str = PACKAGE, layers=LAYERS) -> list[str]:
    """Imports of a module of a higher layer, modules missing from `layers`, and import circles."""
    modules = _modules(package)
    rank = {f"smoothadv_tf.{m}": k for k, layer in enumerate(layers) for m in layer}
    rank["smoothadv_tf"] = -1
    problems = [f"{name}: missing from LAYERS" for name in sorted(set(modules) - set(rank))]
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    for name, imported in sorted(graph.items()):
        for other in sorted(imported):
            if rank.get(other, -1) > rank.get(name, -1):
                problems.append(f"{name} (layer {rank[name]}) imports {other} (layer {rank[other]})")
    state: dict = {}  # depth-first search for a back edge: a circle

    def visit(name, path):
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                problems.append(f"import circle: {' -> '.join(path + [name, other])}")
            elif other not in state:
                visit(other, path + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return problems


def test_only_the_flag_layer_reads_flags_and_no_library_module_imports_it():
    modules = _modules()
    for name, path in modules.items():
        if name in FLAG_LAYER:
            continue
        tree = ast.parse(open(path).read())
        reads = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "FLAGS"]
        reads += [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "FLAGS"]
        for node in ast.walk(tree):  # absl.flags itself, under any name
            if isinstance(node, ast.Import) and any(a.name.startswith("absl.flags") for a in node.names):
                reads.append(node.lineno)
            if isinstance(node, ast.ImportFrom) and (
                (node.module or "").startswith("absl.flags")
                or (node.module == "absl" and any(a.name == "flags" for a in node.names))
            ):
                reads.append(node.lineno)
        assert not reads, f"{path}:{reads[0]} reads absl's FLAGS"
        above = _imports(path, modules) & set(FLAG_LAYER)
        assert not above, f"{path} imports {above}"


def test_modules_import_only_their_layer_or_below_and_never_in_a_circle():
    assert layout_problems() == []


def test_the_layout_check_catches_an_import_upwards_and_a_circle(tmp_path):
    fake = tmp_path / "smoothadv_tf"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "records.py").write_text("def f():\n    from smoothadv_tf import runner\n")
    (fake / "runner.py").write_text("from smoothadv_tf.records import f\n")
    (fake / "extra.py").write_text("")
    (fake / "sub").mkdir()
    (fake / "sub" / "__init__.py").write_text("from .low import g\n")
    (fake / "sub" / "low.py").write_text("from ..runner import f\n")  # relative, upwards
    layers = [{"records", "sub.low"}, {"runner"}, {"sub"}]
    problems = layout_problems(str(fake), layers)
    assert problems == [
        "smoothadv_tf.extra: missing from LAYERS",
        "smoothadv_tf.records (layer 0) imports smoothadv_tf.runner (layer 1)",
        "smoothadv_tf.sub.low (layer 0) imports smoothadv_tf.runner (layer 1)",
        "import circle: smoothadv_tf.records -> smoothadv_tf.runner -> smoothadv_tf.records",
    ]


def test_run_config_refuses_what_the_flags_refuse_with_the_flag_name(tmp_path):
    with pytest.raises(ConfigError, match=r"--attacks: unknown \['cw'\]"):
        RunConfig(attacks=("fgsm", "cw"), output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--attack_params: gamma: none of the selected attacks"):
        RunConfig(attacks=("fgsm",), attack_params={"gamma": 0.1}, output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--attack_params: .*iterations"):
        RunConfig(attacks=("pgd2",), attack_params={"iterations": 0}, output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--num_shards=2, --shard_index=2"):
        RunConfig(num_shards=2, shard_index=2, output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--dataset=folder needs --data_dir"):
        RunConfig(dataset="folder", model="keras:ResNet50", output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--model=c5"):
        RunConfig(model="c5", output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--data_dir=/no/such/dir: no such directory"):
        RunConfig(data_dir="/no/such/dir", output_dir=str(tmp_path))
    assert issubclass(ConfigError, InputError)  # what the scripts print as one line, exit 2
    config = RunConfig(attacks=["fgsm"], output_dir=str(tmp_path))
    assert config.attacks == ("fgsm",) and config.preset_name == "mnist"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_images = 3
    with pytest.raises(TypeError):  # checked once: its overrides cannot change afterwards either
        RunConfig(attacks=("pgd2",), attack_params={"iterations": 5}, output_dir=str(tmp_path)).attack_params[
            "iterations"
        ] = 0
    for bad in ({"batch_size": True}, {"shard_index": -1}, {"memory_budget_gb": "1"}, {"num_images": 2.5}):
        with pytest.raises(ConfigError, match=f"--{next(iter(bad))}="):
            RunConfig(output_dir=str(tmp_path), **bad)
    with pytest.raises(
        ConfigError, match="--tensorboard_dir, --trace_iterations: TensorBoard output, but --notensorboard"
    ):
        RunConfig(tensorboard=False, tensorboard_dir=str(tmp_path), trace_iterations=True, output_dir=str(tmp_path))
    with pytest.raises(
        ConfigError, match=r"--trace_iterations: none of --attacks=fgsm,pgd2 is traced .*carlini_wagner_l2"
    ):
        RunConfig(attacks=("fgsm", "pgd2"), trace_iterations=True, output_dir=str(tmp_path))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="--tensorboard_dir=.*a_file: exists and is not a directory"):
        RunConfig(tensorboard_dir=str(tmp_path / "a_file"), output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--trace_iterations='yes': expected True or False"):
        RunConfig(trace_iterations="yes", output_dir=str(tmp_path))
    assert RunConfig(output_dir=str(tmp_path)).tensorboard_path("run") == os.path.join("run", "tb")
    assert RunConfig(tensorboard=False, output_dir=str(tmp_path)).tensorboard_path("run") is None
    assert RunConfig(devices="CPU:0", output_dir=str(tmp_path)).devices == ("CPU:0",)
    assert config.replace(num_images=3).num_images == 3


FLAGS_TO_CONFIG = """
import dataclasses, json, sys
from absl import flags
from smoothadv_tf import experiment
before = set(flags.FLAGS)
experiment.define_common_flags()
common = sorted(set(flags.FLAGS) - before)
flags.FLAGS(sys.argv)
config = experiment.config_from_flags()
fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
mappings = ("attack_params", "train_params")
print(json.dumps({"common": common, "fields": {k: dict(v) if k in mappings else v for k, v in fields.items()}}))
"""


def test_every_common_flag_reaches_the_run_config(tmp_path):
    """config_from_flags (the one place flags become a RunConfig) passes on every common flag, each set to a
    value other than its default, and the RunConfig has a field for every common flag and no other."""
    import subprocess
    import sys

    checkpoint = tmp_path / "c4.keras"
    checkpoint.write_bytes(b"")  # checked to exist, never read here
    given = {
        "dataset": "mnist",
        "data_dir": str(tmp_path),
        "model": "c4_adv",
        "checkpoint": str(checkpoint),
        "attacks": ["pgd2", "smooth_carlini_wagner_l2"],
        "preset": "imagenet",
        "protocol": "strong",
        "num_images": 7,
        "batch_size": 3,
        "memory_budget_gb": 0.5,
        "output_dir": str(tmp_path / "out"),
        "num_shards": 3,
        "shard_index": 2,
        "seed": 4,
        "c4_epochs": 2,
        "devices": ["CPU:0"],
        "attack_params": {"iterations": 4, "alpha": 0.9},
        "tensorboard_dir": str(tmp_path / "tb"),
        "trace_iterations": True,
    }
    # the training flags apply to a C4 trained here, so not with --checkpoint: a second run sets them
    training = {"model": "c4_adv", "train_attack": "smooth_pgd2", "train_params": {"iterations": 3, "alpha": 0.9}}
    for flags_given, expected in [
        (given, {**given, "train_attack": None, "train_params": {}, "tensorboard": True}),
        (
            {**{k: v for k, v in given.items() if k != "checkpoint"}, **training},
            {**given, "checkpoint": None, **training, "tensorboard": True},
        ),
        (
            {
                **{k: v for k, v in given.items() if k not in ("tensorboard_dir", "trace_iterations")},
                "tensorboard": False,
            },
            {
                **given,
                "train_attack": None,
                "train_params": {},
                "tensorboard": False,
                "tensorboard_dir": None,
                "trace_iterations": False,
            },
        ),
    ]:
        argv = [
            f"--{k}=" + (",".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else ",".join(map(str, v)) if isinstance(v, list) else str(v))
            for k, v in flags_given.items()
        ]  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", FLAGS_TO_CONFIG, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["common"] == sorted(f.name for f in dataclasses.fields(RunConfig))
        assert out["fields"] == expected


def readme_run_snippet() -> str:
    """The README's "Experiments from Python" snippet, as a user reads it."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    return re.search(r"<!-- run-snippet -->\n```python\n(.*?)```", readme, re.S).group(1)


def test_the_readme_run_from_python_writes_the_records_the_script_writes(c4_path, tmp_path, monkeypatch, capsys):
    """The README snippet (RunConfig -> runner.load_data / load_model / run -> report.report) on real
    Fashion-MNIST images writes the records and run.json white_box.py writes for the same flags, wall-clock
    fields aside. Only where it writes and the C4 it loads are changed (the session's C4, not one trained
    for six epochs)."""
    from smoothadv_tf import config as config_lib

    made = []

    def run_config(**fields):
        made.append({**fields, "output_dir": str(tmp_path / "python"), "checkpoint": c4_path})
        return RunConfig(**made[-1])

    monkeypatch.setattr(config_lib, "RunConfig", run_config)
    exec(compile(readme_run_snippet(), "README.md", "exec"), {})
    assert "| FGSM |" in capsys.readouterr().out

    fields = made[0]
    done = run_script(
        "white_box.py",
        f"--dataset={fields['dataset']}",
        f"--model={fields['model']}",
        f"--checkpoint={c4_path}",
        f"--num_images={fields['num_images']}",
        f"--attacks={','.join(fields['attacks'])}",
        f"--attack_params={','.join(f'{k}={v}' for k, v in fields['attack_params'].items())}",
        f"--output_dir={tmp_path / 'script'}",
    )
    assert done.returncode == 0, done.stderr[-2000:]

    def strip(rs):  # wall-clock fields aside, in a fixed order
        return sorted(json.dumps({k: v for k, v in r.items() if k not in records_lib.WALL_CLOCK_FIELDS}) for r in rs)

    run = os.path.join("white_box", "fashion_mnist-c4", "paper")
    from_python = records_lib.read_records(str(tmp_path / "python" / run / "records.jsonl"))
    from_script = records_lib.read_records(str(tmp_path / "script" / run / "records.jsonl"))
    images = fields["num_images"]
    assert (
        len(from_script) == images + images * len(config_lib.TARGETS["mnist"]["fgsm"]) + images
    )  # clean, FGSM at each ε, sC&W
    assert strip(from_python) == strip(from_script)
    identity = [json.loads((tmp_path / where / run / "run.json").read_text()) for where in ("python", "script")]
    assert identity[0] == identity[1]
