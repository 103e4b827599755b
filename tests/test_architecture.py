"""The tree shows the architecture: the import rule of docs/architecture.md holds for every
import in the package (function-level ones too), no module takes part in an import cycle,
the bottom layer uses neither xarray nor dask, and the document names exactly the modules
that exist.  Imports are read from the source with :mod:`ast`, the same way import-linter
(run by .ci/run) builds its graph; this test also sees the imports inside functions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "loomx"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

LAYERS: list[tuple[str, ...]] = [
    ("loomx.errors",),
    ("loomx._hdf5",),
    ("loomx._format",),
    ("loomx._read",),
    ("loomx._write",),
    ("loomx.ops", "loomx.interop"),  # independent of each other
    ("loomx.analysis",),
    ("loomx.testing",),
    ("loomx.cli",),
]
"""Bottom to top: a module imports only from its own layer or the layers below."""

NO_ARRAY_LIBRARIES = ("loomx._hdf5",)
ARRAY_LIBRARIES = ("xarray", "dask", "distributed", "sparse", "pandas")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, source: str | None = None) -> set[str]:
    """The modules ``name`` imports anywhere in its source (absolute names; for
    ``from a import b`` both ``a`` and, when it is a module, ``a.b``)."""
    path = MODULES.get(name)
    tree = ast.parse(source if source is not None else path.read_text())
    package = name if path is not None and path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def internal_graph() -> dict[str, set[str]]:
    """Module -> the loomx modules it imports (a package's own parents left out: importing
    ``loomx.a.b`` runs ``loomx/__init__.py`` first, which is no dependency of the caller)."""
    graph = {}
    for name in MODULES:
        targets = {t for t in imports_of(name) if t in MODULES and t != name}
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def layer_of(name: str) -> int | None:
    for rank, layer in enumerate(LAYERS):
        if any(name == top or name.startswith(top + ".") for top in layer):
            return rank
    return None


def top_of(name: str) -> str:
    return next(
        top for layer in LAYERS for top in layer if name == top or name.startswith(top + ".")
    )


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in graph.items():
        here = layer_of(source)
        if here is None:  # loomx/__init__.py: the public API re-exports every layer
            continue
        for target in targets:
            there = layer_of(target)
            if there is None:  # ``import loomx``: it loads ops and interop
                if here <= layer_of("loomx.ops"):
                    bad.append(f"{source} imports {target}, the package's public API")
            elif there > here or (there == here and top_of(source) != top_of(target)):
                if there == here and len(LAYERS[here]) == 1:
                    continue
                bad.append(f"{source} imports {target} (layer {there} > {here})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_sits_in_a_layer() -> None:
    entry_points = ("loomx", "loomx.__main__")  # the public API and `python -m loomx`
    assert [m for m in MODULES if m not in entry_points and layer_of(m) is None] == []


def test_no_module_imports_from_a_layer_above_it() -> None:
    assert upward_imports(internal_graph()) == []


def test_no_import_cycle() -> None:
    assert cycles(internal_graph()) == []


def test_the_bottom_layer_uses_no_array_library() -> None:
    bad = [
        f"{name} imports {target}"
        for name in MODULES
        if name.startswith(NO_ARRAY_LIBRARIES)
        for target in imports_of(name)
        if target.split(".")[0] in ARRAY_LIBRARIES
    ]
    assert bad == []


@pytest.mark.parametrize(
    ("module", "added", "finds"),
    [
        ("loomx._hdf5.lru", "from loomx._hdf5 import chunks", cycles),
        ("loomx._read.chunking", "from loomx._write import stream", upward_imports),
        ("loomx.ops.qc", "def f():\n    from loomx.interop import tenx", upward_imports),
    ],
)
def test_the_checks_see_a_broken_rule(module, added, finds) -> None:
    """Each check fails on a graph with one bad import added (a function-level one too)."""
    graph = internal_graph()
    assert finds(graph) == []
    source = MODULES[module].read_text() + "\n" + added + "\n"
    graph[module] = {t for t in imports_of(module, source) if t in MODULES} - {module}
    assert finds(graph) != []


def documented_modules() -> set[str]:
    text = ARCHITECTURE.read_text()
    dotted = set(re.findall(r"\bloomx(?:\.\w+)+", text))
    paths = {
        ".".join(Path(p).with_suffix("").parts).removesuffix(".__init__")
        for p in re.findall(r"\bloomx/[\w/]+\.py\b", text)
    }
    packages = {".".join(Path(p).parts) for p in re.findall(r"\bloomx/[\w/]+/", text)}
    return dotted | paths | packages


def public_api() -> set[str]:
    """``loomx.<name>`` for every name of ``loomx.__all__``."""
    tree = ast.parse(MODULES["loomx"].read_text())
    names = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"
    )
    return {f"loomx.{ast.literal_eval(element)}" for element in names.elts}


def top_level_names(module: str) -> set[str]:
    """Names a module defines or imports at its top level."""
    names: set[str] = set()
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_architecture_names_only_modules_that_exist() -> None:
    """Every module the document names exists; a dotted name may go on into a function or
    class of an existing module (``loomx._read.backend.open_loom``)."""
    missing = []
    for name in sorted(documented_modules() - public_api()):
        module = name
        while module not in MODULES and "." in module:
            module = module.rpartition(".")[0]
        rest = name[len(module) + 1 :].split(".")[0]
        if module != name and rest not in top_level_names(module):
            missing.append(name)
    assert missing == []


def test_architecture_names_every_module() -> None:
    named = documented_modules()
    assert [m for m in MODULES if m != "loomx" and m not in named] == []


def test_test_files_have_unique_names() -> None:
    """pytest imports test files by their base name (no ``__init__.py`` in tests/): two
    test files of one name in two folders stop the whole run at collection."""
    names = [p.name for p in sorted((ROOT / "tests").rglob("test_*.py"))]
    assert sorted({n for n in names if names.count(n) > 1}) == []
