"""The attacks' names, options and parameters (§5.2) and the two protocols, without TensorFlow.

Scripts check their flags against these before TensorFlow is imported (a bad flag fails in a fraction of a
second); :mod:`smoothadv_tf.attacks` re-exports everything here. The option table (:data:`OPTIONS`) is not
written here but read from the attack functions' annotated signatures in attacks/*.py (parsed, not imported).
"""

from __future__ import annotations

import ast
import copy
import math
import numbers
import pathlib

# The paper's six attacks (what the experiment scripts run by default), then the L2 attacks beyond the paper
# built on the same latent smoothing: PGD₂ on z with the exact projection, DDN and FMN, plain and smooth.
PAPER_ATTACKS = ("fgsm", "ifgsm", "pgd2", "carlini_wagner_l2", "smooth_pgd2", "smooth_carlini_wagner_l2")
EXTRA_ATTACKS = ("smooth_pgd2_latent", "ddn", "smooth_ddn", "fmn", "smooth_fmn")
ATTACK_NAMES = PAPER_ATTACKS + EXTRA_ATTACKS
BEST_ITERATE_RULES = ("misclassified", "margin")
# C&W / sC&W distortion term: ||r||² (eq. 4 / 18, the paper) or ||r|| (the authors' sC&W code; docs/results.md)
DISTORTION_PENALTIES = ("squared", "norm")
DIRECTIONS = ("latent", "image")  # the step of the smooth rescaling attacks (attacks/minimum_norm.py)

# The keyword options of each attack and their types, read from the attack functions' own signatures (one
# source of truth): the functions decorated ``@checked_attack("<name>")`` in attacks/*.py, whose keyword-only
# parameters are annotated, e.g. ``epsilon: float = 0.3``. The source is parsed, not imported, so that the
# scripts can check their flags before TensorFlow loads. An option annotated bool, int, float or str is a
# scalar (OPTIONS: its type, what check_params and the scripts' flag parsing go by); any other is passed
# through unchecked (NON_SCALAR_OPTIONS: `target` labels, which every attack takes, and the smooth attacks'
# `graph` dict). The margin m is C&W's (eq. 3-4, §5.2) only: the gradient attacks stop at misclassification,
# where m could not change their steps (attacks/gradient.py says why), so they do not take it.
_ATTACK_SOURCES = pathlib.Path(__file__).parent / "attacks"
_SCALAR_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def options_from_source(source: str) -> dict[str, tuple[dict[str, type], tuple[str, ...]]]:
    """{attack name: (scalar options {name: type}, non-scalar option names)} for each function in `source`
    (Python code) decorated ``@checked_attack("<name>")``, from its keyword-only parameters in signature
    order; the non-scalar names start with ``target``. TypeError for an option without an annotation or an
    attack without ``target``: the table would silently lose a check."""
    found = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef):
            continue
        names = [
            d.args[0].value
            for d in node.decorator_list
            if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "checked_attack"
        ]
        for name in names:
            scalar, other = {}, []
            for arg in node.args.kwonlyargs:
                if arg.annotation is None:
                    raise TypeError(f"{name}: option {arg.arg!r} has no type annotation")
                annotation = ast.unparse(arg.annotation)
                if annotation in _SCALAR_TYPES:
                    scalar[arg.arg] = _SCALAR_TYPES[annotation]
                else:
                    other.append(arg.arg)
            if "target" not in other:
                raise TypeError(f"{name}: every attack takes target= (labels, or None for untargeted)")
            found[name] = (scalar, ("target", *[k for k in other if k != "target"]))
    return found


def _read_options() -> dict[str, tuple[dict[str, type], tuple[str, ...]]]:
    """:func:`options_from_source` over the attack modules, in ATTACK_NAMES order; RuntimeError if they define
    other attacks than ATTACK_NAMES lists."""
    found = {}
    for path in sorted(_ATTACK_SOURCES.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "@checked_attack(" in source:  # parse only the modules that define attacks (~5 ms each)
            found.update(options_from_source(source))
    if set(found) != set(ATTACK_NAMES):
        raise RuntimeError(f"attacks/*.py define {sorted(found)}; presets.ATTACK_NAMES lists {sorted(ATTACK_NAMES)}")
    return {name: found[name] for name in ATTACK_NAMES}


_SIGNATURES = _read_options()
OPTIONS = {name: scalar for name, (scalar, _) in _SIGNATURES.items()}
NON_SCALAR_OPTIONS = {name: other for name, (_, other) in _SIGNATURES.items()}

# `epsilon` and `step` are L∞ sizes for FGSM / I-FGSM and L2 sizes for the PGD₂ family (one number cannot mean
# both: ε = 2 saturates every pixel under L∞ and is a small L2 budget). Overrides (--attack_params) can say
# which: epsilon_linf / step_linf and epsilon_l2 / step_l2 (overrides_for maps them to the attacks' own
# `epsilon` / `step`); the plain keys stay accepted where the selected attacks agree on the norm
# (check_override_keys).
LINF_ATTACKS = ("fgsm", "ifgsm")
L2_BUDGET_ATTACKS = ("pgd2", "smooth_pgd2", "smooth_pgd2_latent")
NORM_KEYS = {
    "epsilon_linf": ("epsilon", LINF_ATTACKS),
    "step_linf": ("step", LINF_ATTACKS),
    "epsilon_l2": ("epsilon", L2_BUDGET_ATTACKS),
    "step_l2": ("step", L2_BUDGET_ATTACKS),
}

DISPLAY_NAMES = {
    "fgsm": "FGSM",
    "ifgsm": "I-FGSM",
    "pgd2": "PGD2",
    "carlini_wagner_l2": "C&W",
    "smooth_pgd2": "sPGD2",
    "smooth_carlini_wagner_l2": "sC&W",
    "smooth_pgd2_latent": "sPGD2-z",
    "ddn": "DDN",
    "smooth_ddn": "sDDN",
    "fmn": "FMN",
    "smooth_fmn": "sFMN",
}

# §5.2 parameters. What the paper leaves unstated (iterations, binary-search steps, which iterate C&W keeps)
# comes from the protocol below.
_MNIST_SMOOTHING = {"alpha": 0.95, "solver": "auto"}  # the exact ŝ_α (the paper inverts L_α), fastest way
_IMAGENET_SMOOTHING = {"alpha": 0.997, "solver": "cg", "cg_iterations": 50}
_MNIST_CW = {"margin": 1.0, "learning_rate": 0.1, "initial_const": 15.0}
_IMAGENET_CW = {"margin": 0.0, "learning_rate": 0.1, "initial_const": 100.0}
# DDN and FMN at their authors' (and foolbox's) defaults: 100 steps, γ 0.05; DDN starts at ε = 1, FMN's step
# anneals from 1 to 0.01. sPGD₂ on z takes sPGD₂'s budget.
_DDN = {"iterations": 100, "init_epsilon": 1.0, "gamma": 0.05}
_FMN = {"iterations": 100, "max_step": 1.0, "min_step": 0.01, "gamma": 0.05}
PRESETS = {
    "mnist": {
        "fgsm": {"epsilon": 0.3},
        "ifgsm": {"epsilon": 0.3, "step": 0.08, "iterations": 10},
        "pgd2": {"epsilon": 5.0, "step": 3.0, "iterations": 10},
        "carlini_wagner_l2": dict(_MNIST_CW),
        "smooth_pgd2": {"epsilon": 5.0, "step": 3.0, "iterations": 10, **_MNIST_SMOOTHING},
        "smooth_carlini_wagner_l2": {**_MNIST_CW, **_MNIST_SMOOTHING},
        "smooth_pgd2_latent": {"epsilon": 5.0, "step": 3.0, "iterations": 10, **_MNIST_SMOOTHING},
        "ddn": dict(_DDN),
        "smooth_ddn": {**_DDN, **_MNIST_SMOOTHING},
        "fmn": dict(_FMN),
        "smooth_fmn": {**_FMN, **_MNIST_SMOOTHING},
    },
    "imagenet": {
        "fgsm": {"epsilon": 0.1255},
        "ifgsm": {"epsilon": 0.1255, "step": 0.08, "iterations": 10},
        "pgd2": {"epsilon": 5.0, "step": 3.0, "iterations": 10},
        "carlini_wagner_l2": dict(_IMAGENET_CW),
        "smooth_pgd2": {"epsilon": 5.0, "step": 3.0, "iterations": 10, **_IMAGENET_SMOOTHING},
        "smooth_carlini_wagner_l2": {**_IMAGENET_CW, **_IMAGENET_SMOOTHING},
        "smooth_pgd2_latent": {"epsilon": 5.0, "step": 3.0, "iterations": 10, **_IMAGENET_SMOOTHING},
        "ddn": dict(_DDN),
        "smooth_ddn": {**_DDN, **_IMAGENET_SMOOTHING},
        "fmn": dict(_FMN),
        "smooth_fmn": {**_FMN, **_IMAGENET_SMOOTHING},
    },
}

# How C&W and sC&W are run; the other four attacks are the same under both protocols.
# - paper: the authors' code (SAE/scw_*.py, adv_train/cw.py in hanwei0912/SmoothAdversarialExamples) calls
#   cleverhans' CarliniWagnerL2 with binary_search_steps=1, max_iterations=100, so c stays at the §5.2 constant
#   and an iterate counts only when the margin m is met. cleverhans aborts early on the *batch's* total loss,
#   which ties an image's result to its batch-mates; a per-image abort stops C&W far too soon (D̄ 17 % above
#   the reference, docs/results.md), so the paper protocol runs all 100 iterations: independent of batch-mates
#   and within 3 % of foolbox's cleverhans-rule C&W (scripts/bench_attacks.py, tests/test_protocol.py).
# - strong: a 5-step binary search over c per image, keeping the least-distortion 8-bit misclassified iterate;
#   the right choice for a robustness evaluation.
PROTOCOLS = {
    "paper": {"binary_search_steps": 1, "iterations": 100, "best_iterate": "margin", "abort_early": False},
    "strong": {"binary_search_steps": 5, "iterations": 100, "best_iterate": "misclassified", "abort_early": False},
}
DEFAULT_PROTOCOL = "paper"
PROTOCOL_DESCRIPTIONS = {
    "paper": "the authors' protocol: C&W and sC&W run one binary-search step of 100 Adam iterations at the §5.2 "
    "constant c, keeping the least-distortion iterate that meets the margin m (cleverhans' rule)",
    "strong": "the strong protocol: C&W and sC&W run a 5-step binary search over c per image (500 iterations), "
    "keeping the least-distortion 8-bit misclassified iterate",
}
OPTIMALITY_ATTACKS = ("carlini_wagner_l2", "smooth_carlini_wagner_l2")
# The minimisation attacks whose per-iteration loss, distortion and share adversarial can be recorded
# (attacks.record_iterations; the scripts' --trace_iterations).
TRACEABLE_ATTACKS = OPTIMALITY_ATTACKS + ("ddn", "smooth_ddn", "fmn", "smooth_fmn")


def smoothing_applications(attack: str, params: dict) -> int:
    """Solves of ŝ_α per image that `attack` makes with `params` (a backward pass through ŝ_α counting one):
    what solver="auto" weighs a dense factorisation against (smoothing.resolve_solver); 0 without smoothing."""
    iterations = int(params.get("iterations", 100))
    if attack == "smooth_pgd2":  # the gradient is smoothed; nothing flows back through ŝ_α
        return iterations
    if attack == "smooth_carlini_wagner_l2":
        return 2 * int(params.get("binary_search_steps", 1)) * iterations
    if attack in ("smooth_ddn", "smooth_fmn", "smooth_pgd2_latent"):
        return 2 * iterations
    return 0


def preset(name: str, attack: str, protocol: str = DEFAULT_PROTOCOL, **overrides) -> dict:
    """Parameters of `attack` under preset `name` ('mnist' or 'imagenet', §5.2) and `protocol` ('paper', the
    default: the authors' one-step C&W; or 'strong': a 5-step binary search), with overrides applied."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}: expected one of {sorted(PRESETS)}")
    if attack not in ATTACK_NAMES:
        raise ValueError(f"attack={attack!r}: expected one of {sorted(ATTACK_NAMES)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: expected one of {sorted(PROTOCOLS)}")
    params = copy.deepcopy(PRESETS[name][attack])
    if attack in OPTIMALITY_ATTACKS:
        params.update(PROTOCOLS[protocol])
    return {**params, **overrides}


# Domains of the options, for checking user input before any work (check_params).
_COUNTS = ("iterations", "binary_search_steps", "cg_iterations")
_POSITIVE = ("epsilon", "step", "learning_rate", "initial_const", "init_epsilon", "max_step", "min_step")
_CHOICES = {
    "solver": ("auto", "chebyshev", "dense", "cg"),
    "cg_gradient": ("autodiff", "implicit"),
    "best_iterate": BEST_ITERATE_RULES,
    "direction": DIRECTIONS,
    "distortion_penalty": DISTORTION_PENALTIES,
}


def param_type(attack: str, key: str):
    """The type (bool, int, float or str) `attack` expects for its scalar option `key`; None if it has none."""
    return OPTIONS[attack].get(key)


def check_params(attack: str, params: dict) -> None:
    """Raise ValueError naming the first option of `params` that `attack` does not take, or whose value has
    the wrong type or lies outside its domain (counts >= 1, ε / step / learning rate / c > 0, m >= 0,
    α in [0, 1), the named choices)."""
    if attack not in OPTIONS:
        raise ValueError(f"attack={attack!r}: expected one of {list(ATTACK_NAMES)}")
    for key, value in params.items():
        if key in NON_SCALAR_OPTIONS[attack]:
            continue
        expected = param_type(attack, key)
        if expected is None:
            raise ValueError(f"{attack} takes no option {key!r}")
        # numbers.Real / Integral: NumPy scalars (np.float32(0.5), np.int64(3)) are numbers too
        number = isinstance(value, numbers.Real) and not _is_bool(value)
        ok = {
            bool: _is_bool(value),
            int: number and math.isfinite(value) and float(value).is_integer(),
            float: number,
            str: isinstance(value, str),
        }[expected]
        if not ok:
            raise ValueError(f"{attack}: {key}={value!r}: expected {expected.__name__}")
        problem = (
            (key in _COUNTS and value < 1 and "must be at least 1")
            or (key in _POSITIVE and not (math.isfinite(value) and value > 0) and "must be positive")
            or (key == "margin" and not (math.isfinite(value) and value >= 0) and "must be >= 0")
            or (key == "alpha" and not 0 <= value < 1 and "must be in [0, 1)")
            or (key == "gamma" and not 0 < value < 1 and "must be in (0, 1)")
            or (key in _CHOICES and value not in _CHOICES[key] and f"expected one of {list(_CHOICES[key])}")
        )
        if problem:
            raise ValueError(f"{attack}: {key}={value!r}: {problem}")
    if "min_step" in params and "max_step" in params and params["min_step"] > params["max_step"]:
        raise ValueError(f"{attack}: min_step={params['min_step']!r} > max_step={params['max_step']!r}")


def _is_bool(value) -> bool:
    """A Python or NumPy bool (NumPy's is not a bool subclass; checked by its dtype, without importing NumPy)."""
    return isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b"


def override_type(attack: str, key: str):
    """The type `attack` expects for override `key`: its own option's, or for a norm key (epsilon_linf,
    step_l2, ...) the type of the option it names if `attack` is of that norm; None if the attack takes none."""
    if key in NORM_KEYS:
        option, takers = NORM_KEYS[key]
        return param_type(attack, option) if attack in takers else None
    return param_type(attack, key)


def overrides_for(attack: str, overrides: dict) -> dict:
    """The overrides `attack` takes, under its own option names: a norm key (epsilon_linf, ...) becomes
    `epsilon` / `step` for the attacks of its norm; other keys pass where the attack has that option.
    ValueError if a plain key and a norm key both set the same option of `attack`."""
    out = {}
    for key, value in overrides.items():
        if key in NORM_KEYS:
            option, takers = NORM_KEYS[key]
            if attack not in takers or option not in OPTIONS[attack]:  # FGSM has an ε but no step
                continue
        elif key in OPTIONS[attack] or key in NON_SCALAR_OPTIONS[attack]:
            option = key
        else:
            continue
        if option in out:
            raise ValueError(f"{attack}: {option} is set twice (by {option} and a norm key); give one")
        out[option] = value
    return out


def _norm(attack: str) -> str | None:
    return "L∞" if attack in LINF_ATTACKS else "L2" if attack in L2_BUDGET_ATTACKS else None


def check_override_keys(selected, overrides) -> None:
    """Raise ValueError (one line) when an override key means different things to the `selected` attacks: a
    plain `epsilon` / `step` taken by both an L∞ attack (FGSM, I-FGSM) and an L2 one (the PGD₂ family), a
    norm key no selected attack is of, or a plain and a norm key setting the same attack's option."""
    for key in overrides:
        if key in NORM_KEYS:
            option, takers = NORM_KEYS[key]
            if not any(a in takers and param_type(a, option) for a in selected):
                raise ValueError(
                    f"{key}: none of the selected attacks {list(selected)} has an {_norm(takers[0])} {option}"
                )
            both = [a for a in selected if a in takers and option in overrides]
            if both:
                raise ValueError(f"{option} and {key} both set {both[0]}'s {option}; give one")
        elif key in ("epsilon", "step"):
            by_norm = {}
            for a in selected:
                if param_type(a, key) is not None:
                    by_norm.setdefault(_norm(a), []).append(a)
            if len(by_norm) > 1:
                raise ValueError(
                    f"{key} is an L∞ size for {by_norm['L∞']} and an L2 size for {by_norm['L2']}: "
                    f"give {key}_linf and/or {key}_l2 instead"
                )


# ------------------------------------------------------------------------------- adversarial training budgets
TRAIN_ATTACKS = ("step_ll", "fgsm_rs", "pgd2", "smooth_pgd2", "smooth_pgd2_latent", "smooth_ddn")
SMOOTH_TRAIN_ATTACKS = ("smooth_pgd2", "smooth_pgd2_latent", "smooth_ddn")
MIX_OPTIONS = ("fraction", "weight")

# Training budgets per dataset. How they were chosen:
# - step_ll: the paper's (Kurakin et al.: ε_max 0.3 on [0, 1] MNIST; λ 0.3, half of each batch).
# - fgsm_rs: Wong et al.'s MNIST budget (ε 0.3, step 1.25 ε); on Fashion-MNIST ε 0.1, the L∞ radius commonly
#   used there (0.3 erases the garments' texture); ImageNet: their 4/255.
# - the L2 attacks: ε about 1.3x the clean C4's PGD₂ mean distortion on Fashion-MNIST (1.14, docs/results.md), so
#   that most training examples cross the boundary; MNIST 2.0 (Madry et al.'s L2 MNIST radius); ImageNet 3.0
#   (the robustness library's L2 ImageNet models). k = 5 steps of 2.5 ε / k (Madry et al.'s step rule): five
#   steps keep a 6-epoch C4 within 20 minutes on two cores with every training attack (docs/results.md).
# - smooth_ddn: the same 5 steps, starting at the training ε; DDN's own γ.
# - smoothing: the attacks' presets (α 0.95 and the exact ŝ_α at 28x28; α 0.997 and CG 50 on ImageNet).
_L2 = {"mnist": 2.0, "fashion_mnist": 1.5, "imagenet": 3.0}
_LINF = {"mnist": 0.3, "fashion_mnist": 0.1, "imagenet": 4 / 255}
_SMOOTHING = {
    "mnist": {"alpha": 0.95, "solver": "auto"},
    "fashion_mnist": {"alpha": 0.95, "solver": "auto"},
    "imagenet": {"alpha": 0.997, "solver": "cg", "cg_iterations": 50},
}
STEPS = 5
TRAINING_DATASETS = tuple(_L2)


def _presets(dataset: str) -> dict:
    eps = _L2[dataset]
    l2 = {"epsilon": eps, "step": 2.5 * eps / STEPS, "iterations": STEPS, "fraction": 0.5, "weight": 1.0}
    return {
        "step_ll": {"epsilon": 0.3, "fraction": 0.5, "weight": 0.3},
        "fgsm_rs": {"epsilon": _LINF[dataset], "step": 1.25 * _LINF[dataset], "fraction": 0.5, "weight": 1.0},
        "pgd2": dict(l2),
        "smooth_pgd2": {**l2, **_SMOOTHING[dataset]},
        "smooth_pgd2_latent": {**l2, **_SMOOTHING[dataset]},
        "smooth_ddn": {
            "iterations": STEPS,
            "init_epsilon": eps,
            "gamma": 0.05,
            "direction": "image",
            "fraction": 0.5,
            "weight": 1.0,
            **_SMOOTHING[dataset],
        },
    }


TRAINING_PRESETS = {dataset: _presets(dataset) for dataset in TRAINING_DATASETS}
# The library attack whose option checks a training attack's budget goes through (step_ll / fgsm_rs take
# FGSM's / I-FGSM's ε and step).
_CHECKED_AS = {"step_ll": "fgsm", "fgsm_rs": "ifgsm"}


def training_dataset(dataset: str) -> str:
    """The training presets a run's dataset takes: its own for MNIST / Fashion-MNIST, ImageNet's for photos
    (nips17, folder, imagenet); ValueError for another name."""
    if dataset in ("mnist", "fashion_mnist", "imagenet"):
        return dataset
    if dataset in ("nips17", "folder"):
        return "imagenet"
    raise ValueError(f"dataset={dataset!r}: training budgets exist for mnist, fashion_mnist, imagenet (nips17, folder)")


# the types of the training options (a preset's value gives the others' types)
_SMOOTHING_OPTION_TYPES = {"alpha": float, "solver": str, "cg_iterations": int, "cg_gradient": str}


def training_options(attack: str) -> dict[str, type]:
    """{option: type} of training attack `attack`: its preset's keys, plus the smoothing ones for a smooth attack."""
    options = {k: type(v) for k, v in TRAINING_PRESETS["fashion_mnist"][attack].items()}
    if attack in SMOOTH_TRAIN_ATTACKS:
        options = {**_SMOOTHING_OPTION_TYPES, **options}
    return options


def training_params(attack: str, dataset: str = "fashion_mnist", **overrides) -> dict:
    """The budget of training attack `attack` on `dataset` (:data:`TRAINING_PRESETS`) with `overrides`, checked:
    ValueError (one line) for an unknown attack or option, or a value outside its domain."""
    if attack not in TRAIN_ATTACKS:
        raise ValueError(f"train_attack={attack!r}: expected one of {list(TRAIN_ATTACKS)}")
    preset = TRAINING_PRESETS[training_dataset(dataset)][attack]
    unknown = sorted(set(overrides) - set(training_options(attack)))
    if unknown:
        raise ValueError(
            f"train_attack={attack}: takes no option {unknown[0]!r} (its options: {sorted(training_options(attack))})"
        )
    params = {**preset, **overrides}
    check_training_params(attack, params)
    return params


def check_training_params(attack: str, params: dict) -> None:
    """ValueError naming the first option of a training budget that is missing, unknown or out of its domain."""
    if attack not in TRAIN_ATTACKS:
        raise ValueError(f"train_attack={attack!r}: expected one of {list(TRAIN_ATTACKS)}")
    missing = sorted(set(TRAINING_PRESETS["fashion_mnist"][attack]) - set(params))
    unknown = sorted(set(params) - set(training_options(attack)))
    if missing or unknown:
        what = f"missing option {missing[0]!r}" if missing else f"takes no option {unknown[0]!r}"
        raise ValueError(f"train_attack={attack}: {what}")
    fraction, weight = params["fraction"], params["weight"]
    if not (_real(fraction) and 0 < fraction <= 1):
        raise ValueError(f"train_attack={attack}: fraction={fraction!r}: must be in (0, 1] (the adversarial share)")
    if not (_real(weight) and math.isfinite(weight) and weight > 0):
        raise ValueError(f"train_attack={attack}: weight={weight!r}: must be positive")
    attack_params = {k: v for k, v in params.items() if k not in MIX_OPTIONS}
    try:
        check_params(_CHECKED_AS.get(attack, attack), attack_params)
    except ValueError as e:
        detail = str(e).split(": ", 1)[-1]
        raise ValueError(f"train_attack={attack}: {detail}") from None


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not _is_bool(value)
