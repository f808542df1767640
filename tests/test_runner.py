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
    {"attacks"},  # a package's __init__ sits above the modules it gathers
    {"models.wrap", "models.applications", "models.c4", "models.slim"},
    {"models", "models.loading"},
    {"records", "statistics"},
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
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smoothadv_tf"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
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
    problems = layout_problems(str(fake), [{"records"}, {"runner"}])
    assert problems == [
        "smoothadv_tf.extra: missing from LAYERS",
        "smoothadv_tf.records (layer 0) imports smoothadv_tf.runner (layer 1)",
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
    assert config.replace(num_images=3).num_images == 3


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
