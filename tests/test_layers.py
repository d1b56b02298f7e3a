"""The package's layers, as its subpackages' docstrings state them, held against every import.

Each subpackage's ``__init__`` ends its docstring with a line ``May import: a, b, c.`` (or ``nothing of
auto_evol``); the verbs at the top (optimize, evolve, compare) may import every subpackage but cli, and
cli everything. Every import counts, those inside functions too; only ``if TYPE_CHECKING:`` blocks are
exempt (they never run). A second check: no import cycle between modules, however late the import.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "auto_evol"
VERBS = "verbs"   # the top-level modules: optimize, evolve, compare
FACES = {"auto_evol", "auto_evol.__main__"}   # the package's public face and `python -m`: exempt from layer rules


def read_package(root: Path = PACKAGE) -> dict[str, str]:
    """Every module of the package as dotted name -> source."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path.read_text(encoding="utf-8")
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and _is_package(parts[1])) else VERBS


_PACKAGES: set[str] = set()


def _is_package(name: str) -> bool:
    return name in _PACKAGES


def rules(sources: dict[str, str]) -> dict[str, set[str]]:
    """What each layer may import, read from its subpackage's docstring."""
    allowed: dict[str, set[str]] = {}
    for module, src in sources.items():
        if module.count(".") != 1 or module not in _PACKAGE_INITS:
            continue
        doc = ast.get_docstring(ast.parse(src)) or ""
        found = re.search(r"^May import: (.+?)\.?\s*$", doc, re.M)
        assert found, f"{module}'s docstring says nothing of what it may import ('May import: ...')"
        said = found.group(1)
        names = set() if said.startswith("nothing") else {n.strip() for n in said.split(",")}
        allowed[module.split(".")[1]] = {VERBS if n == "the verbs" else n for n in names}
    allowed[VERBS] = set(allowed) - {"cli"}
    return allowed


_PACKAGE_INITS: set[str] = set()


def imports(module: str, src: str, modules: set[str]) -> set[str]:
    """The package modules ``module`` imports, outside ``if TYPE_CHECKING:`` blocks. ``from .x import
    name`` imports x; ``from . import x`` and ``from .pkg import x`` import the module x itself."""
    tree = ast.parse(src)
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    here = module.split(".") if module in _PACKAGE_INITS or module == "auto_evol" else module.split(".")[:-1]

    def ours(dotted: str) -> str | None:   # the longest prefix of a dotted name that is one of our modules
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in modules:
                return ".".join(parts[:i])
        return None

    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(filter(None, (ours(a.name) for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            stem = ".".join(here[:len(here) - (node.level - 1)] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            for alias in node.names:
                target = f"{stem}.{alias.name}"
                found.add(target if target in modules else ours(stem))
    return {m for m in found if m and m != module}


def graph(sources: dict[str, str]) -> dict[str, set[str]]:
    _PACKAGES.clear()
    _PACKAGE_INITS.clear()
    for module in sources:
        if any(other.startswith(module + ".") for other in sources):
            _PACKAGE_INITS.add(module)
            if module.count(".") == 1:
                _PACKAGES.add(module.split(".")[1])
    return {m: imports(m, src, set(sources)) for m, src in sources.items()}


def upward(sources: dict[str, str]) -> list[str]:
    """Every import that crosses into a layer its own may not import, as 'a -> b (layer x may not import y)'."""
    edges = graph(sources)
    allowed = rules(sources)
    out = []
    for module, targets in sorted(edges.items()):
        if module in FACES:
            continue
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if target in FACES or theirs == mine:
                continue
            if theirs not in allowed.get(mine, set()):
                out.append(f"{module} -> {target} ({mine} may not import {theirs})")
    return out


def cycles(sources: dict[str, str]) -> list[list[str]]:
    """The import cycles between modules (strongly connected components of more than one module)."""
    edges = graph(sources)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_upward():
    assert upward(read_package()) == []


def test_no_import_cycles():
    assert cycles(read_package()) == []


def test_every_module_lives_in_a_subpackage_named_for_its_concern():
    top = sorted(p.name for p in PACKAGE.iterdir() if not p.name.startswith((".", "_")) or p.name in {"__init__.py", "__main__.py"})
    top = [n for n in top if n != "__pycache__"]
    assert len(top) <= 12, top
    loose = {n for n in top if n.endswith(".py")} - {"__init__.py", "__main__.py", "optimize.py", "evolve.py", "compare.py"}
    assert loose == set(), f"modules outside a subpackage: {sorted(loose)}"


def _planted(extra: dict[str, str]) -> dict[str, str]:
    sources = read_package()
    sources.update(extra)
    return sources


def test_a_planted_upward_import_is_caught():
    sources = read_package()
    # storage reaching up into the algorithm, inside a function (late imports count)
    sources["auto_evol.storage.data"] += "\n\ndef _planted():\n    from ..algorithm.failure import Failure\n    return Failure\n"
    assert upward(sources) == ["auto_evol.storage.data -> auto_evol.algorithm.failure (storage may not import algorithm)"]
    # an import that only a type checker reads is exempt
    clean = read_package()
    clean["auto_evol.storage.data"] += ("\n\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                        "    from ..algorithm.failure import Failure\n")
    assert upward(clean) == []
    # the layer below the algorithm may not import a verb either
    verbs = read_package()
    verbs["auto_evol.llm.cost"] += "\nfrom .. import optimize as _optimize\n"
    assert upward(verbs) == ["auto_evol.llm.cost -> auto_evol.optimize (llm may not import verbs)"]


def test_a_planted_cycle_is_caught():
    sources = read_package()
    # two modules of one layer importing each other, one of them late: a cycle all the same
    sources["auto_evol.llm.check"] += "\n\ndef _planted():\n    from . import roles\n    return roles\n"
    found = cycles(sources)
    assert found and any({"auto_evol.llm.check", "auto_evol.llm.roles"} <= set(c) for c in found), found


def test_a_subpackage_without_its_rule_is_refused():
    sources = read_package()
    sources["auto_evol.core"] = '"""Shared pieces."""\n'
    with pytest.raises(AssertionError, match="may import"):
        rules(sources)
