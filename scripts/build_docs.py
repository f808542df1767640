"""The API reference: ``smoothadv_tf`` and every submodule rendered to HTML from the docstrings by pdoc.

    python scripts/build_docs.py                          # into docs/api (what `make docs` runs)
    python scripts/build_docs.py --output_dir=/tmp/api

Before anything is written the docstrings are checked (:func:`check_modules`): every public function, class,
method and property defined in a module (``__all__`` where the module has one) has a non-empty docstring, and
every cross-reference in every docstring resolves. A problem is printed as one ``module.name: problem`` line,
and the script exits 1 writing nothing. A module that does not import (an integration whose toolbox is missing)
is such a problem: all of ``smoothadv_tf`` is rendered or nothing is.

The docstrings are written for Sphinx: roles (``:func:``, ``:class:``, ``:meth:``, ``:attr:``, ``:data:``,
``:mod:``, ``:exc:``, ``:obj:``; ``~`` shows the last component only; a leading dot is relative) are resolved
here as Sphinx resolves them — a relative name against the class (for a member), the module and the
packages above it; a plain name against the class, the module, the module's own namespace (imported names) and
then as an absolute name — and become links to the page and anchor where pdoc renders the target, or code text
where the target is not rendered (a private name, another library). Backticked dotted ``smoothadv_tf`` names
are checked too; pdoc links those itself. The math is Unicode text (ŝ_α, ‖r‖², Σ_ij w_ij) and renders as
written: no MathJax (pdoc's ``math`` option loads it from a CDN and would take every ``$`` for a delimiter).
"""

from __future__ import annotations

import html
import importlib
import inspect
import os
import pkgutil
import re
import shutil
import sys
import types
import warnings
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import NamedTuple

from absl import app, flags

from smoothadv_tf.cli import run_script  # TensorFlow-free: the flags are checked before any module is imported

FLAGS = flags.FLAGS
PACKAGE = "smoothadv_tf"

# :role:`target`, :role:`~target`, :role:`title <target>` (Sphinx's Python-domain roles; :py:role: too).
ROLE = re.compile(r"(?::py)?:(mod|func|data|const|class|meth|attr|exc|obj):`([^`]+)`")
# A backticked dotted name in a package (`smoothadv_tf.x.y`, ``smoothadv_tf.x.y()``): pdoc links these.
BACKTICK_NAME = r"(?<!`)(`{{1,2}})({package}(?:\.\w+)+)(?:\(\))?\1(?!`)"
# An rST literal-block marker at the end of a line: "text::" reads "text:", a lone "::" disappears.
LITERAL_MARKER = re.compile(r"(\s?)::$", re.MULTILINE)
CALLABLE_ROLES = ("func", "meth")
_MISSING = object()


class Target(NamedTuple):
    """Where a reference points: the object, and the module and qualified name it is documented under."""

    obj: object
    module: str
    qualname: str  # "" for a module

    @property
    def fullname(self) -> str:
        """``module.qualname`` (the module's name for a module)."""
        return f"{self.module}.{self.qualname}".rstrip(".")


class Docstring(NamedTuple):
    """One docstring and where it was written: the module, the class for a member (Sphinx's context)."""

    owner: str  # module.qualname of what it documents, for the problem lines
    text: str
    module: types.ModuleType
    cls: type | None


def import_package(package: str = PACKAGE) -> tuple[dict[str, types.ModuleType], list[str]]:
    """The package and its public submodules (names without a leading underscore), imported; and a problem
    line for each that fails to import (e.g. an integration whose toolbox is not installed)."""
    modules, problems = {}, []

    def visit(name: str) -> None:
        try:
            module = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any failure to import is reported, one line per module
            message = " ".join(str(e).split()) or type(e).__name__
            problems.append(f"{name}: does not import ({type(e).__name__}: {message})")
            return
        modules[name] = module
        for info in pkgutil.iter_modules(getattr(module, "__path__", []) or []):
            if not info.name.startswith("_"):
                visit(f"{name}.{info.name}")

    visit(package)
    return modules, problems


def _is_function(obj) -> bool:
    return inspect.isroutine(obj) or inspect.isroutine(getattr(obj, "__wrapped__", None))


def _defined_in(obj, module: types.ModuleType) -> bool:
    return (inspect.isclass(obj) or _is_function(obj)) and getattr(obj, "__module__", None) == module.__name__


def _own_members(cls: type) -> Iterator[tuple[str, object, object]]:
    """(name, raw attribute, value as read from the class) for what `cls` itself defines."""
    for name, raw in vars(cls).items():
        if isinstance(raw, (staticmethod, classmethod)):
            yield name, raw, raw.__func__
        elif isinstance(raw, property):
            yield name, raw, raw.fget
        elif isinstance(raw, cached_property):
            yield name, raw, raw.func
        elif inspect.isclass(raw) or _is_function(raw):
            yield name, raw, raw


def public_names(module: types.ModuleType) -> list[str]:
    """The module's public names: ``__all__`` if it has one, else every name without a leading underscore."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return list(names)


def undocumented(module: types.ModuleType) -> list[str]:
    """``module.name: no docstring`` for the module and for each public function, class, method or property
    defined in it (not imported into it) without a non-empty docstring. A method or property may inherit its
    base's docstring (what pdoc shows, as Sphinx does); a class may not (Python would hand it its base's)."""
    problems = [] if (module.__doc__ or "").strip() else [f"{module.__name__}: no docstring"]

    def visit_class(cls: type, qualname: str) -> None:
        if not (cls.__doc__ or "").strip():
            problems.append(f"{module.__name__}.{qualname}: no docstring")
        for name, _, value in _own_members(cls):
            if name.startswith("_"):
                continue
            if inspect.isclass(value):
                if value.__qualname__ == f"{cls.__qualname__}.{name}":  # nested here, not an alias
                    visit_class(value, f"{qualname}.{name}")
                continue
            doc = inspect.getdoc(getattr(cls, name, value))
            if not (doc or "").strip():
                problems.append(f"{module.__name__}.{qualname}.{name}: no docstring")

    for name in public_names(module):
        obj = getattr(module, name, _MISSING)
        if obj is _MISSING:
            problems.append(f"{module.__name__}.{name}: listed in __all__ but not defined")
        elif _defined_in(obj, module) and obj.__name__ == name:
            if inspect.isclass(obj):
                visit_class(obj, name)
            elif not (obj.__doc__ or "").strip():
                problems.append(f"{module.__name__}.{name}: no docstring")
    return problems


def _variable_docstrings(namespace) -> dict[str, str]:
    """The docstrings written under assignments (``X = ...`` then a string), which pdoc renders."""
    from pdoc import doc_ast

    try:
        return dict(doc_ast.walk_tree(namespace).var_docstrings)
    except (OSError, TypeError):  # no source
        return {}


def docstrings(module: types.ModuleType) -> Iterator[Docstring]:
    """Every docstring written in `module`, private objects' included: the module's, its variables', and
    those of the functions and classes it defines (their methods, properties, variables and nested classes)."""
    modname = module.__name__
    if module.__doc__:
        yield Docstring(modname, module.__doc__, module, None)
    for name, text in _variable_docstrings(module).items():
        yield Docstring(f"{modname}.{name}", text, module, None)

    def visit_class(cls: type, qualname: str) -> Iterator[Docstring]:
        if cls.__doc__:
            yield Docstring(f"{modname}.{qualname}", cls.__doc__, module, cls)
        for name, text in _variable_docstrings(cls).items():
            yield Docstring(f"{modname}.{qualname}.{name}", text, module, cls)
        for name, raw, value in _own_members(cls):
            if inspect.isclass(value):
                if value.__qualname__ == f"{cls.__qualname__}.{name}":
                    yield from visit_class(value, f"{qualname}.{name}")
            elif text := (raw.__doc__ if isinstance(raw, property) else getattr(value, "__doc__", None)):
                yield Docstring(f"{modname}.{qualname}.{name}", text, module, cls)

    for name, obj in vars(module).items():
        if not _defined_in(obj, module) or obj.__name__ != name:
            continue
        if inspect.isclass(obj):
            yield from visit_class(obj, name)
        elif obj.__doc__:
            yield Docstring(f"{modname}.{name}", obj.__doc__, module, None)


def _lookup(dotted: str, start=_MISSING):
    """The object a dotted name reaches, and the chain of (name, object) walked (for where the last one is
    documented): from `start` (an object) if given, else from an imported top-level module. Each step reads the
    attribute, as Python code would (a class's own members from the class that defines them, unbound), and
    falls back to an imported submodule of that name."""
    parts = dotted.split(".")
    if start is _MISSING:
        if parts[0] not in sys.modules:
            return _MISSING, []
        chain, parts = [(None, sys.modules[parts[0]])], parts[1:]
    else:
        chain = [(None, start)]
    for part in parts:
        parent = chain[-1][1]
        raw = _MISSING
        if inspect.isclass(parent):
            raw = next((vars(base)[part] for base in parent.__mro__ if part in vars(base)), _MISSING)
        if raw is _MISSING:
            try:
                raw = getattr(parent, part)
            except Exception:  # noqa: BLE001 - anything an attribute lookup raises means: not there
                raw = _MISSING
        if raw is _MISSING and isinstance(parent, types.ModuleType):
            raw = sys.modules.get(f"{parent.__name__}.{part}", _MISSING)
        if raw is _MISSING:
            return _MISSING, []
        chain.append((part, raw))
    return chain[-1][1], chain


def _location(chain) -> Target:
    """Where the last object of a lookup chain is documented (classes and functions: where they are defined;
    members: the class that defines them; data: the module or class it was reached through)."""
    name, obj = chain[-1]
    value = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
    if isinstance(value, types.ModuleType):
        return Target(value, value.__name__, "")
    qualname = getattr(value, "__qualname__", None)
    module = getattr(value, "__module__", None)
    if (inspect.isclass(value) or _is_function(value)) and isinstance(module, str) and isinstance(qualname, str):
        if "<locals>" not in qualname:
            return Target(obj, module, qualname)
    parent = chain[-2][1]
    if inspect.isclass(parent):
        owner = next((b for b in parent.__mro__ if name in vars(b)), parent)
        return Target(obj, owner.__module__, f"{owner.__qualname__}.{name}")
    if isinstance(parent, types.ModuleType):
        return Target(obj, parent.__name__, name)
    outer = _location(chain[:-1])
    return Target(obj, outer.module, f"{outer.qualname}.{name}".lstrip("."))


def resolve(target: str, module: types.ModuleType, cls: type | None = None) -> Target | None:
    """Where a cross-reference written in `module` (inside class `cls`: a member's or the class's docstring)
    points, as Sphinx resolves it; None if nowhere.

    ``.name`` (relative): the class, then the module, then each package above it. ``name``: the class, the
    module (its namespace, so imported names resolve to their definition), then the absolute name."""
    target = target.strip().lstrip("~").removesuffix("()")
    if not re.fullmatch(r"\.?\w+(\.\w+)*", target):
        return None
    relative = target.startswith(".")
    name = target.lstrip(".")
    starts = []
    if cls is not None:
        starts.append(cls)
    starts.append(module)
    if relative:
        package = module.__name__ if hasattr(module, "__path__") else module.__name__.rpartition(".")[0]
        while package:
            if package in sys.modules:
                starts.append(sys.modules[package])
            package = package.rpartition(".")[0]
    for start in starts:
        obj, chain = _lookup(name, start)
        if obj is not _MISSING:
            return _location(chain)
    if not relative:
        obj, chain = _lookup(name)
        if obj is not _MISSING:
            return _location(chain)
    return None


def references(text: str, package: str = PACKAGE) -> Iterator[tuple[str, str, str]]:
    """(what was written, role or "", target) for each Sphinx role and each backticked dotted name in
    `package` (``smoothadv_tf.x.y``) in a docstring."""
    for match in ROLE.finditer(text):
        yield match.group(0), match.group(1), _role_target(match.group(2))
    for match in re.finditer(BACKTICK_NAME.format(package=re.escape(package)), ROLE.sub("", text)):
        yield match.group(0), "", match.group(2)


def _role_target(content: str) -> str:
    titled = re.fullmatch(r"(.*?)\s*<([^<>]+)>", content, re.DOTALL)
    return (titled.group(2) if titled else content).strip()


def is_public(target: Target) -> bool:
    """No part of its qualified name begins with an underscore, and its module's ``__all__`` (if any) lists it."""
    if any(part.startswith("_") for part in target.qualname.split(".")):
        return False
    listed = getattr(sys.modules.get(target.module), "__all__", None)
    return listed is None or not target.qualname or target.qualname.partition(".")[0] in listed


def broken_references(module: types.ModuleType, rendered: set | None = None, all_modules=None) -> list[str]:
    """``module.name: ...`` for each cross-reference in a docstring of `module` that resolves to nothing, and
    (given the rendered sections, :func:`anchors`) for each that names a public object of the rendered modules
    which pdoc does not render, so that the link would go nowhere."""
    problems = []
    for doc in docstrings(module):
        for written, _, target in references(doc.text, module.__name__.partition(".")[0]):
            found = resolve(target, doc.module, doc.cls)
            if found is None:
                problems.append(f"{doc.owner}: broken reference {written} (no such object)")
            elif (
                rendered is not None
                and found.module in all_modules
                and is_public(found)
                and _rendered_location(found, rendered, all_modules) is None
            ):
                problems.append(
                    f"{doc.owner}: reference {written} to {found.fullname}, which is public but not rendered "
                    "(pdoc renders what is assigned by name: NAME = ..., not A, B = ...)"
                )
    return problems


def check_modules(modules: Mapping[str, types.ModuleType]) -> list[str]:
    """Every problem in the docstrings of `modules` (name -> module, all that is rendered), one
    ``module.name: problem`` line each: a public function, class, method or property without a docstring, a cross-reference that resolves to
    nothing or to a public object that is not rendered. Empty when all is well."""
    import pdoc.doc

    all_modules = {name: pdoc.doc.Module(module) for name, module in modules.items()}
    rendered = anchors(all_modules)
    problems = []
    for module in modules.values():
        problems += undocumented(module)
        problems += broken_references(module, rendered, all_modules)
    return problems


# ---- rendering ---------------------------------------------------------------------------------------------


def _walk_docs(doc, cls: type | None = None) -> Iterator:
    """(pdoc documentation object, the class it is a member of or None) for a module or class and everything
    rendered inside it: a module's members, a class's own members."""
    import pdoc.doc

    yield doc, cls
    if isinstance(doc, pdoc.doc.Module):
        for member in doc.members.values():
            yield from _walk_docs(member)
    elif isinstance(doc, pdoc.doc.Class):
        for member in doc.own_members:
            yield from _walk_docs(member, doc.obj)


def _rendered(doc, module) -> bool:
    """pdoc's default rule (its template's ``is_public``) for whether a member gets a section and an anchor."""
    if "@private" in doc.docstring:
        return False
    if "@public" in doc.docstring:
        return True
    top = doc.qualname.partition(".")[0]
    if doc.qualname == top and top in (getattr(module.obj, "__all__", None) or []):
        return True
    return not any(part.startswith("_") for part in doc.qualname.split("."))


def anchors(all_modules: Mapping) -> set[tuple[str, str]]:
    """(module, qualname) of every rendered section; (module, "") for each page."""
    out = set()
    for name, module in all_modules.items():
        out.add((name, ""))
        for doc, _ in _walk_docs(module):
            if doc is not module and _rendered(doc, module):
                out.add((name, doc.qualname))
    return out


def _context(doc, cls: type | None, page: types.ModuleType) -> tuple[types.ModuleType | None, type | None]:
    """The module and class a docstring rendered on `page` was written in (the module None: another library's).
    pdoc reads a variable's docstring from the source of the module or class it is assigned in."""
    import pdoc.doc

    if isinstance(doc, pdoc.doc.Module):
        return doc.obj, None
    if isinstance(doc, pdoc.doc.Class):
        return sys.modules.get(doc.obj.__module__), doc.obj
    if isinstance(doc, pdoc.doc.Variable):
        return (page if cls is None else sys.modules.get(cls.__module__)), cls
    return sys.modules.get(doc.taken_from[0]), cls


def to_pdoc_markdown(text: str, module: types.ModuleType, cls, page: str, rendered: set, all_modules) -> str:
    """A docstring with its Sphinx roles turned into links to the rendered target (or into code text where the
    target is not rendered) and rST literal-block markers (``text::``) into Markdown's plain colon."""
    from pdoc.render_helpers import relative_link

    def replace(match: re.Match) -> str:
        role, content = match.group(1), match.group(2)
        titled = re.fullmatch(r"(.*?)\s*<([^<>]+)>", content, re.DOTALL)
        written = _role_target(content)
        found = resolve(written, module, cls)
        if titled:
            display = titled.group(1)
        else:
            display = written.lstrip("~").lstrip(".").removesuffix("()")
            if written.startswith("~"):
                display = display.rpartition(".")[2]
            if role in CALLABLE_ROLES:
                display += "()"
        # Raw HTML, so that the display differs from the target. Its text is not protected from Markdown as a
        # code span is: "_" as an entity (else Markdown pairs it with another "_" around it into <em>), and
        # "." followed by <wbr> (a line may break there, and pdoc's linkify, which links dotted names in the
        # HTML, leaves the name alone instead of nesting a second link inside this one).
        code = "<code>" + html.escape(display).replace("_", "&#95;").replace(".", ".<wbr>") + "</code>"
        if found is None:
            return code
        location = _rendered_location(found, rendered, all_modules)
        if location is None:
            return code
        href = relative_link(page, location.module) + (f"#{location.qualname}" if location.qualname else "")
        # "." as an entity: pdoc's linkify would take "#Class.method" in the attribute for a relative name.
        return f'<a href="{html.escape(href).replace(".", "&#46;")}">{code}</a>'

    return LITERAL_MARKER.sub(lambda m: "" if m.group(1) else ":", ROLE.sub(replace, text))


def _rendered_location(found: Target, rendered: set, all_modules) -> Target | None:
    """The rendered section of a reference's target: where it is documented, else (data imported into another
    module) a rendered module variable of the same name holding the same object; None if not rendered."""
    if (found.module, found.qualname) in rendered:
        return found
    name = found.qualname
    if name and "." not in name:
        for modname in all_modules:
            if (modname, name) in rendered and getattr(sys.modules.get(modname), name, _MISSING) is found.obj:
                return Target(found.obj, modname, name)
    return None


def render(modules: Mapping[str, types.ModuleType]) -> dict[str, str]:
    """The HTML pages (relative path -> text): one per module, ``index.html`` and pdoc's ``search.js``; the
    docstrings' Sphinx roles as links (:func:`to_pdoc_markdown`)."""
    # pdoc warns of each string annotation naming a module imported only for type checkers ('tf.Tensor'); it
    # shows the string, as written.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Error parsing type annotation", category=UserWarning)
        return _render(modules)


def _render(modules: Mapping[str, types.ModuleType]) -> dict[str, str]:
    import pdoc.doc
    import pdoc.render

    pdoc.render.configure(docformat="restructuredtext", footer_text="smoothadv_tf API reference")
    all_modules = {name: pdoc.doc.Module(module) for name, module in sorted(modules.items())}
    rendered = anchors(all_modules)
    ours = set(modules.values())
    for name, page in all_modules.items():
        for doc, owner in _walk_docs(page):
            module, cls = _context(doc, owner, page.obj)
            if doc.docstring and module in ours:
                doc.docstring = to_pdoc_markdown(doc.docstring, module, cls, name, rendered, all_modules)
    pages = {
        f"{name.replace('.', '/')}.html": pdoc.render.html_module(m, all_modules) for name, m in all_modules.items()
    }
    if index := pdoc.render.html_index(all_modules):
        pages["index.html"] = index
    if search := pdoc.render.search_index(all_modules):
        pages["search.js"] = search
    return pages


def _check_output_dir(path: str) -> None:
    if not path.strip():
        raise app.UsageError("--output_dir: must name a folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise app.UsageError(f"--output_dir={path}: exists and is not a folder")
    if os.path.isdir(path) and os.listdir(path) and not os.path.exists(os.path.join(path, f"{PACKAGE}.html")):
        raise app.UsageError(f"--output_dir={path}: not empty and not an earlier API build; not overwriting it")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise app.UsageError(f"--output_dir={path}: {existing} is not a writable folder")


def write(pages: Mapping[str, str], output_dir: str) -> None:
    """Replace an earlier build in `output_dir` (only what a build writes) with `pages`."""
    for stale in (PACKAGE, f"{PACKAGE}.html", "index.html", "search.js"):
        path = os.path.join(output_dir, stale)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    for relative, text in pages.items():
        path = os.path.join(output_dir, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    _check_output_dir(FLAGS.output_dir)
    from smoothadv_tf.integrations.common import require

    require("pdoc", "docs", "pdoc", "make docs")  # one line naming the pip install, if missing
    modules, problems = import_package()
    problems += check_modules(modules)
    if problems:
        for line in problems:
            print(line)
        print(f"{len(problems)} problem(s) in the docstrings: nothing written to {FLAGS.output_dir}", file=sys.stderr)
        return 1
    pages = render(modules)
    write(pages, FLAGS.output_dir)
    print(f"{len(modules)} modules rendered: {os.path.join(FLAGS.output_dir, 'index.html')}")
    return 0


if __name__ == "__main__":
    # Defined here, not at import: tests import this file for check_modules into a process whose other modules
    # (smoothadv_tf.experiment) define an --output_dir flag of their own.
    flags.DEFINE_string("output_dir", "docs/api", "folder for the HTML (an earlier build there is replaced)")
    run_script(main)
