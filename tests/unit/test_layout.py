"""The package layout's import rules (docs/DESIGN.md §10), checked by parsing every module's imports.

- ``schemas`` imports nothing of ours; ``ingest`` and ``workers`` import only ``schemas`` (never each other);
  ``history`` imports ``schemas``; ``gateway`` imports ``schemas`` and ``history``; ``stepline`` imports freely.
- The one exception: ``ingest.Api`` re-exports ``history.Api`` lazily, inside ``ingest.__getattr__``.
- No module imports another module's private (``_``-prefixed) names.
- ``__main__.py`` files only call into their package (no library code there).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("schemas", "ingest", "workers", "history", "gateway", "stepline")
ALLOWED: dict[str, set[str]] = {
    "schemas": {"schemas"},
    "ingest": {"ingest", "schemas"},
    "workers": {"workers", "schemas"},
    "history": {"history", "schemas"},
    "gateway": {"gateway", "history", "schemas"},
    "stepline": set(OURS),
}
#: (module file, imported package, enclosing function): the documented exceptions.
EXCEPTIONS = {("ingest/__init__.py", "history", "__getattr__")}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imports(path: Path) -> Iterator[tuple[str, list[str], str | None, int]]:
    """(absolute module imported, names imported, enclosing function or None, line) for every import."""
    tree = ast.parse(path.read_text(), str(path))
    package_parts = path.relative_to(ROOT).with_suffix("").parts[:-1]
    if path.name == "__init__.py":
        package_parts = path.relative_to(ROOT).parts[:-1]

    def visit(node: ast.AST, func: str | None) -> Iterator[tuple[str, list[str], str | None, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from visit(child, child.name)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, [], func, child.lineno
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = list(package_parts[: len(package_parts) - child.level + 1])
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                yield mod, [a.name for a in child.names], func, child.lineno
            yield from visit(child, func)

    yield from visit(tree, None)


@pytest.mark.parametrize("package", OURS)
def test_packages_import_only_what_the_layout_allows(package: str) -> None:
    assert modules(package), f"package {package} has no modules"
    bad = []
    for path in modules(package):
        rel = str(path.relative_to(ROOT))
        for mod, _names, func, line in imports(path):
            top = mod.split(".")[0]
            if top in OURS and top not in ALLOWED[package] and (rel, top, func) not in EXCEPTIONS:
                bad.append(f"{rel}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_no_module_imports_private_names_of_another() -> None:
    bad = []
    for package in OURS:
        for path in modules(package):
            rel = str(path.relative_to(ROOT))
            for mod, names, _func, line in imports(path):
                if mod.split(".")[0] not in OURS:
                    continue
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private:
                    bad.append(f"{rel}:{line} imports {', '.join(private)} from {mod}")
    assert not bad, "\n".join(bad)


def test_examples_use_only_the_sdk() -> None:
    """examples/ are what a W&B user writes: of our packages they import only ``ingest`` (``ingest.Api`` reads)."""
    scripts = sorted((ROOT / "examples").glob("*.py"))
    assert scripts, "examples/ has no scripts"
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in scripts for mod, _n, _f, line in imports(p)
           if mod.split(".")[0] in OURS and mod.split(".")[0] != "ingest"]
    assert not bad, "\n".join(bad)


def test_main_modules_hold_no_library_code() -> None:
    for package in OURS:
        for path in (ROOT / package).rglob("__main__.py"):
            tree = ast.parse(path.read_text())
            kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            defs = [n.name for n in ast.walk(tree) if isinstance(n, kinds)]
            assert not defs, f"{path.relative_to(ROOT)} defines {defs}: library code belongs in a module"


def test_the_parser_sees_what_the_rules_need() -> None:
    """The parser sees relative and absolute imports, and functions they sit in (so the rules are not vacuous)."""
    pkg = ROOT / "ingest"
    found = {(mod, func) for mod, _n, func, _l in imports(pkg / "__init__.py")}
    assert ("history", "__getattr__") in found
    assert ("ingest.run", None) in found
    assert any(mod == "schemas" for mod, _f in found)


def test_the_lazy_api_reexport_works() -> None:
    import history
    import ingest

    assert ingest.Api is history.Api


def test_importing_the_sdk_imports_no_training_framework() -> None:
    """``import ingest`` (and its integrations package) must not pull in torch, Lightning, Transformers or Keras:
    the integrations import their framework in their own submodule only (a fresh interpreter, so nothing else
    of the test session counts)."""
    import subprocess
    import sys

    code = (
        "import sys, ingest, ingest.integrations\n"
        "heavy = ('torch', 'lightning', 'pytorch_lightning', 'transformers', 'keras', 'tensorflow', 'jax')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
