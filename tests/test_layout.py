"""The package's layout is its architecture: which folder may import which, no circles,
and the README's layout table says exactly what the tree holds.

The imports are read with ``ast`` from the source files, all of them: at module level,
inside functions, and under ``if TYPE_CHECKING:`` (a circle through type hints is still a
circle to a reader, and becomes a real one the day a hint is needed at run time).
Importing a submodule implicitly runs its parents' ``__init__``; that is not an edge here,
only what a module names.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "exporter" / "persona_exporter"
NAME = "persona_exporter"

TOP = ("cli", "__main__", "__init__")
EVERYTHING = frozenset({"core", "metrics", "tracing", "genai", "sdk", "server", "bundle",
                        "tools", "top"})
# layer -> the layers it may import (its own included)
MAY_IMPORT: dict[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "metrics": frozenset({"core", "metrics"}),
    "tracing": frozenset({"core", "metrics", "tracing"}),
    "sdk": frozenset({"core", "metrics", "tracing", "sdk"}),
    "genai": frozenset({"core", "genai"}),
    "server": frozenset({"core", "metrics", "tracing", "genai", "server"}),
    "bundle": frozenset({"core", "bundle"}),
    "tools": EVERYTHING,
    "top": EVERYTHING,
}
# The core is what every side shares, so it takes nothing heavier than these.
CORE_THIRD_PARTY = frozenset({"pydantic", "yaml"})


@dataclass(frozen=True)
class Import:
    importer: str   # dotted module name
    target: str     # dotted module (or package) name, or a top-level third-party name
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]
    if len(parts) == 1:
        return "top" if parts[0] in TOP else "core"
    return parts[0]


def _is_module(dotted: str, root: Path) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import a module names, resolved to a module of the package where it is one."""
    name = module_name(path, root)  # a package's __init__ is "pkg.__init__"
    package = name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                target = (candidate if source.split(".")[0] == NAME
                          and _is_module(candidate, root) else source)
                found.append(Import(name, target, node.lineno))
    return found


def internal(target: str, root: Path) -> str | None:
    """The package module a target names (``pkg.sub`` means ``pkg/sub/__init__``)."""
    if target.split(".")[0] != NAME:
        return None
    rel = Path(*target.split(".")[1:])
    if (root / rel / "__init__.py").is_file():
        return f"{target}.__init__" if target != NAME else f"{NAME}.__init__"
    return target


def check(root: Path) -> list[str]:
    """Every violation of the layout rules in the package at ``root``, as readable lines."""
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for imp in imports_of(path, root):
            graph.setdefault(imp.importer, set())
            importer_layer = layer_of(imp.importer)
            where = f"{path.relative_to(root.parent)}:{imp.line}"
            target = internal(imp.target, root)
            if target is None:
                top = imp.target.split(".")[0]
                if (importer_layer == "core" and top not in sys.stdlib_module_names
                        and top not in CORE_THIRD_PARTY and top != "__future__"):
                    problems.append(f"{where}: the core imports {imp.target!r} "
                                    f"(only the standard library, pydantic and yaml)")
                continue
            target_layer = layer_of(target)
            if target_layer not in MAY_IMPORT[importer_layer]:
                problems.append(f"{where}: {importer_layer} may not import {target_layer} "
                                f"({imp.importer} imports {target})")
            if target != imp.importer:
                graph[imp.importer].add(target)
    problems += [f"import circle: {' -> '.join([*cycle, cycle[0]])}"
                 for cycle in circles(graph)]
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle from each strongly connected set of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_keeps_its_layout_rules() -> None:
    assert check(PACKAGE) == []


def test_every_module_is_in_a_known_folder() -> None:
    folders = {p.parent.name for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE}
    assert folders == EVERYTHING - {"core", "top"}


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    copy = tmp_path / NAME
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.mark.parametrize(("module", "line", "expected"), [
    ("server/ingest.py", "from ..sdk import telemetry",
     "server may not import sdk (persona_exporter.server.ingest imports "
     "persona_exporter.sdk.telemetry)"),
    ("server/serve.py", "from persona_exporter.sdk.llm import ObservableLLM",
     "server may not import sdk"),
    ("metrics/recorder.py", "    from ..tracing import otlp_env",   # inside a function body
     "metrics may not import tracing"),
    ("bundle/rules.py", "from ..metrics.recorder import Recorder",
     "bundle may not import metrics"),
    ("catalog.py", "import prometheus_client",
     "the core imports 'prometheus_client'"),
    ("events.py", "from .sdk.usage import TokenUsage", "core may not import sdk"),
])
def test_a_forbidden_import_is_reported(package_copy: Path, module: str, line: str,
                                        expected: str) -> None:
    if line.startswith(" "):
        line = f"def _late():\n{line}"
    _append(package_copy / module, line)
    problems = check(package_copy)
    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert problems[0].startswith(f"{NAME}/{module}:")


def test_an_import_circle_is_reported_even_under_type_checking(package_copy: Path) -> None:
    # the circle this layout broke: context naming workflow's handles for its type hints
    _append(package_copy / "sdk" / "context.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from .workflow import workflow")
    assert check(package_copy) == [
        "import circle: persona_exporter.sdk.context -> persona_exporter.sdk.workflow -> "
        "persona_exporter.sdk.context"]


# --- the README's layout table ---

def readme_layout() -> dict[str, tuple[set[str], set[str]]]:
    """folder -> (modules it holds, layers it may import), from the README's table."""
    text = (ROOT / "README.md").read_text()
    start = text.index("| folder | holds | may import |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        folder, holds, may = (cell.strip() for cell in line.strip("|").split("|"))
        layer = re.fullmatch(r"`persona_exporter/(\w*)/?`(?: \((\w+)\))?", folder)
        assert layer is not None, f"README layout row {folder!r}"
        key = layer.group(2) or layer.group(1)
        rows[key] = (set(re.findall(r"`([\w.]+)`", holds)),
                     {w.strip() for w in may.split(",")})
    return rows


def test_the_readme_layout_table_matches_the_tree() -> None:
    rows = readme_layout()
    assert set(rows) == EVERYTHING
    for layer, (holds, may) in rows.items():
        if layer in ("core", "top"):
            files = {p.stem for p in PACKAGE.glob("*.py")
                     if (p.stem in TOP) == (layer == "top")}
            files |= {p.name for p in PACKAGE.glob("*.yaml")} if layer == "core" else set()
        else:
            files = {p.stem for p in (PACKAGE / layer).glob("*.py")} - {"__init__"}
        assert holds == files, f"README row {layer}: says {sorted(holds)}, tree has {sorted(files)}"
        expected = ({"anything"} if MAY_IMPORT[layer] == EVERYTHING
                    else {"stdlib", "pydantic", "yaml"} if layer == "core"
                    else MAY_IMPORT[layer] - {layer})
        assert may == expected, f"README row {layer}: may import {may}, the rule is {expected}"
