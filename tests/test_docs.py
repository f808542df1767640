"""The API reference (`make docs`, scripts/build_docs.py): the real build of every module, its Sphinx roles as
working links and its Unicode math as written; the docstring check on a crafted package; bad flags."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import sys
import textwrap

from conftest import ROOT, assert_refused, run_script

DOCSTRING = re.compile(r'<div class="docstring">(.*?)</div>', re.S)
ROLE_LINK = re.compile(r'<a href="([^"]*)"><code>(.*?)</code></a>')


def load_build_docs():
    """scripts/build_docs.py as a module (its flags are defined only when it runs as a script)."""
    spec = importlib.util.spec_from_file_location("build_docs_script", os.path.join(ROOT, "scripts", "build_docs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def library_modules() -> list[str]:
    """Every public module of the package, from its files (importing it would import TensorFlow)."""
    names = []
    for folder, _, files in os.walk(os.path.join(ROOT, "smoothadv_tf")):
        package = os.path.relpath(folder, ROOT).replace(os.sep, ".")
        if "__init__.py" not in files or any(part.startswith("_") for part in package.split(".")):
            continue
        names.append(package)
        names += [f"{package}.{f[:-3]}" for f in files if f.endswith(".py") and not f.startswith("_")]
    return sorted(names)


def docstrings_html(path) -> str:
    """The rendered docstrings of a page (not its source listing, which holds the raw text too)."""
    with open(path, encoding="utf-8") as f:
        return "\n".join(DOCSTRING.findall(f.read()))


def test_build_renders_every_module_with_roles_as_links_and_math_as_written(tmp_path):
    """The real build: a page per module (the integrations, which import ART and foolbox, included); every
    Sphinx role in every docstring gone, each one that became a link pointing at an existing page and anchor;
    :class:`~smoothadv_tf.smoothing.Smoother` in layers.py a link to Smoother's section showing "Smoother";
    eq. (6)'s smoothness ratio and eq. (9) in Unicode as written."""
    out = tmp_path / "api"
    done = run_script("build_docs.py", f"--output_dir={out}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    pages = {name: out / f"{name.replace('.', '/')}.html" for name in library_modules()}
    missing = [name for name, path in pages.items() if not path.is_file()]
    assert not missing, f"no page for {missing}"
    assert "smoothadv_tf.integrations.art" in pages and "smoothadv_tf.integrations.foolbox" in pages
    assert (out / "index.html").is_file() and (out / "search.js").is_file()

    ids = {
        os.path.normpath(p): set(re.findall(r'\sid="([^"]+)"', p.read_text(encoding="utf-8"))) for p in pages.values()
    }
    links = 0
    for name, path in pages.items():
        text = docstrings_html(path)
        raw = re.findall(r":(?:mod|func|data|const|class|meth|attr|exc|obj):`", text)
        assert not raw, f"{name}: Sphinx roles left as text: {raw}"
        for href, _ in ROLE_LINK.findall(text):
            page, _, anchor = html.unescape(href).partition("#")
            target = os.path.normpath(os.path.join(os.path.dirname(path), page)) if page else os.path.normpath(path)
            assert target in ids and (not anchor or anchor in ids[target]), f"{name}: broken link {href}"
            links += 1
    assert links > 100  # the package's docstrings hold some 250 references

    layers = docstrings_html(pages["smoothadv_tf.layers"])
    assert '<a href="smoothing&#46;html#Smoother"><code>Smoother</code></a>' in layers  # the ~ form: last name
    assert "<code>smoothadv&#95;tf.<wbr>smoothing.<wbr>Smoother</code></a>" in layers  # the full form
    root = docstrings_html(pages["smoothadv_tf"])
    assert '<a href="smoothadv_tf/attacks&#46;html"><code>attacks</code></a>' in root  # :mod:`.attacks`

    smoothing = docstrings_html(pages["smoothadv_tf.smoothing"])
    assert "(1/2) Σ_ij w_ij ||r̂_i - r̂_j||² / ||r||², the smoothness term of eq. (6)" in smoothing
    assert "ŝ_α(z) = diag(s_α(1))^-1 s_α(z)" in smoothing and "(eq. 9)" in smoothing
    assert "<em>" not in smoothing.split("Σ_ij")[1][:200]  # the underscores stay underscores


def write_package(root, name: str, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")


def test_check_names_each_undocumented_name_and_broken_reference(tmp_path, monkeypatch):
    """check_modules on a crafted package: one line per public function, class and method without a docstring
    and per reference that goes nowhere (a role, a backticked package name, public data pdoc does not render);
    nothing for private, imported, unlisted (__all__) or inherited-docstring names, or for references that
    resolve (relative ones against the package and the class, private targets included). A submodule that does
    not import is one line too."""
    build_docs = load_build_docs()
    name = f"crafted_docs_{os.getpid()}"
    write_package(
        tmp_path,
        name,
        {
            "__init__.py": f'''
                """The package: :mod:`.api`, :func:`.api.documented`, `{name}.api.Public`."""
            ''',
            "api.py": f'''
                """See :func:`documented`, :class:`~.api.Public`, :meth:`Public.value`, :func:`.api._helper`,
                :data:`TABLE`, :data:`{name}.api.LISTED` and :class:`os.PathLike`; broken: :func:`missing_function`,
                :meth:`Public.nope`, `{name}.api.Gone` and :data:`UNRENDERED`."""

                from os.path import join  # imported: checked where it is defined

                TABLE = {{}}
                """A documented table: pdoc renders it."""
                LISTED: dict = {{}}
                FIRST, UNRENDERED = {{}}, {{}}  # pdoc renders no tuple assignment


                def documented():
                    """Documented."""


                def undocumented_function():
                    pass


                def _helper():
                    pass


                class Public:
                    """Its :meth:`method`, :attr:`value` and :meth:`inherited`; broken: :attr:`absent`."""

                    def method(self):
                        pass

                    @property
                    def value(self):
                        """A property."""

                    def inherited(self):
                        """Documented once, here."""

                    def _private(self):
                        pass


                class Child(Public):
                    """Inherits a docstring."""

                    def inherited(self):
                        return 1


                class Undocumented:
                    pass
            ''',
            "listed.py": '''
                """Only __all__ is public here: :data:`HIDDEN` is code text, not a link."""

                __all__ = ["shown"]

                HIDDEN = 1


                def shown():
                    pass


                def not_listed():
                    pass
            ''',
            "needs_toolbox.py": '''
                """An integration whose toolbox is missing."""

                raise ImportError("needs_toolbox needs a toolbox: pip install 'crafted[toolbox]'")
            ''',
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        modules, import_problems = build_docs.import_package(name)
        problems = build_docs.check_modules(modules)
    finally:
        for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            del sys.modules[module]

    assert import_problems == [
        f"{name}.needs_toolbox: does not import (ImportError: needs_toolbox needs a toolbox: "
        "pip install 'crafted[toolbox]')"
    ]
    api = f"{name}.api"
    expected = {
        f"{api}.undocumented_function: no docstring",
        f"{api}.Public.method: no docstring",
        f"{api}.Undocumented: no docstring",
        f"{name}.listed.shown: no docstring",
        f"{api}: broken reference :func:`missing_function` (no such object)",
        f"{api}: broken reference :meth:`Public.nope` (no such object)",
        f"{api}: broken reference `{name}.api.Gone` (no such object)",
        f"{api}.Public: broken reference :attr:`absent` (no such object)",
    }
    unrendered = f"{api}: reference :data:`UNRENDERED` to {api}.UNRENDERED, which is public but not rendered"
    assert [p for p in problems if p.startswith(unrendered)], problems
    assert set(p for p in problems if not p.startswith(unrendered)) == expected, problems
    assert len(problems) == len(expected) + 1, problems


def test_resolve_follows_sphinx():
    """Relative names against the module and the packages above it, plain names against the class first and
    through imports to where the object is defined."""
    build_docs = load_build_docs()
    import smoothadv_tf.cli as cli
    import smoothadv_tf.errors as errors

    target = build_docs.resolve(".errors.InputError", cli)  # a sibling module, through the package
    assert (target.module, target.qualname) == ("smoothadv_tf.errors", "InputError")
    target = build_docs.resolve("InputError", cli)  # imported into cli: documented in errors
    assert (target.module, target.qualname) == ("smoothadv_tf.errors", "InputError")
    assert build_docs.resolve("~smoothadv_tf.cli.run_script()", errors).qualname == "run_script"
    assert build_docs.resolve("run_script", errors) is None  # not in errors' namespace
    assert build_docs.resolve(".nothing", cli) is None


def test_bad_flags_are_one_line(tmp_path):
    """--output_dir that is a file, or a folder holding something else than an earlier build, and stray
    arguments: exit 2 with one line, before anything is imported or written."""
    a_file = tmp_path / "file.html"
    a_file.write_text("mine")
    done = run_script("build_docs.py", f"--output_dir={a_file}")
    assert_refused(done, "build_docs.py", f"--output_dir={a_file}", "not a folder")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("mine")
    done = run_script("build_docs.py", f"--output_dir={tmp_path / 'notes'}")
    assert_refused(done, "build_docs.py", "not an earlier API build")
    assert (tmp_path / "notes" / "mine.txt").read_text() == "mine"
    assert_refused(run_script("build_docs.py", "--output_dir="), "build_docs.py", "--output_dir: must name a folder")
    assert_refused(run_script("build_docs.py", "stray"), "build_docs.py", "unexpected arguments: stray")


def test_without_pdoc_one_line_names_the_extra(tmp_path):
    """pdoc missing (a package of that name that cannot be imported comes first on the path): one line
    naming `pip install 'smoothadv_tf[docs]'`, exit 2, nothing written, in the loud environment."""
    from conftest import LOUD_DIR

    (tmp_path / "shadow" / "pdoc").mkdir(parents=True)
    (tmp_path / "shadow" / "pdoc" / "__init__.py").write_text("raise ImportError('No module named pdoc (test)')\n")
    path = os.pathsep.join([str(tmp_path / "shadow"), LOUD_DIR, ROOT])
    done = run_script("build_docs.py", f"--output_dir={tmp_path / 'api'}", env={"PYTHONPATH": path})
    assert_refused(done, "build_docs.py", "make docs needs pdoc", "pip install 'smoothadv_tf[docs]'")
    assert not (tmp_path / "api").exists()
