"""The import graph of the product code: no cycle, and no module imports another package's
private (underscore) module. Read from the source with ``ast``, every import counted, those
inside functions and ``if TYPE_CHECKING`` blocks too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("embedcore", "server", "edge_client")  # checked for cycles and private imports
ALSO_CHECKED_FOR_PRIVATE_IMPORTS = ("benchmarks",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(*roots: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            out[_module_name(path)] = path
    return out


def _imports(path: Path, module: str) -> Iterator[str]:
    """Absolute names of every module ``path`` imports (``from a import b`` -> a.b or a)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield f"{base}.{alias.name}"
                yield base


def _graph() -> dict[str, set[str]]:
    modules = _modules(*PACKAGES)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, name):
            # The most specific module of this tree the import names (a package's __init__ only
            # when the import names the package itself).
            if imported in modules and imported != name:
                targets.add(imported)
        # "from a.b import c" yields a.b.c and a.b: keep only a.b.c when it is a module.
        graph[name] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    assert len(graph) > 40  # the walk found the product modules
    assert "server.runtime" in graph["server.app"]  # and reads their imports
    assert _cycles(graph) == []


def test_no_module_imports_another_packages_private_module() -> None:
    offences = []
    for name, path in _modules(*PACKAGES, *ALSO_CHECKED_FOR_PRIVATE_IMPORTS).items():
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for imported in _imports(path, name):
            parts = imported.split(".")
            for i, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:i])  # the package the private module belongs to
                    if owner and owner != own_package and parts[0] in PACKAGES:
                        offences.append(f"{name} imports {imported}")
                    break
    assert offences == []


def test_the_checks_would_catch_a_cycle_and_a_private_import() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert list(_imports(REPO / "server" / "servicers" / "__init__.py", "server.servicers"))
