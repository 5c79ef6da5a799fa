"""The shape of the code base: no import cycles between packages or modules, docs that name every package,
e2e tests where ``make unit`` leaves them out.

Imports are read from the source (an AST walk), function-level ones included: an import deferred
into a function is still a dependency, and deferring one is how a cycle hides.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "radflow"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """radflow modules ``path`` imports (absolute or relative), as dotted names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = _module_name(path).split(".")
    package = own if path.name == "__init__.py" else own[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {name for name in found if name == "radflow" or name.startswith("radflow.")}


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_cycle_finder_finds_a_cycle_and_accepts_a_dag() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_packages_import_each_other_without_cycles() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        src = _package_of(name)
        for target in _imports(path):
            dst = _package_of(target)
            if dst != src and dst != "radflow":
                graph[src].add(dst)
    assert _cycle(graph) is None, "package import cycle: " + " -> ".join(_cycle(graph) or [])


def test_modules_import_each_other_without_cycles() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in _imports(path):
            # `from radflow.x import y` names module radflow.x.y when there is one, else a name in radflow.x
            dst = target if target in modules else target.rsplit(".", 1)[0]
            if dst in modules and dst != name and not name.startswith(dst + "."):
                graph[name].add(dst)
    # A package's __init__ re-exporting its modules is not a cycle with them.
    for name in list(graph):
        graph[name] = {d for d in graph[name] if not (d.startswith(name + ".") and modules[name].name == "__init__.py")}
    assert _cycle(graph) is None, "module import cycle: " + " -> ".join(_cycle(graph) or [])


def test_architecture_doc_names_every_package() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    packages = sorted(_module_name(p.parent / "__init__.py") for p in SRC.rglob("__init__.py") if p.parent != SRC)
    missing = [p for p in packages if f"`{p}`" not in doc and f"`{p.removeprefix('radflow.')}/`" not in doc]
    assert not missing, f"docs/architecture.md does not name {missing}"


def test_every_e2e_test_lives_under_tests_e2e() -> None:
    outside = []
    for path in (ROOT / "tests").rglob("test_*.py"):
        if "e2e" in path.relative_to(ROOT / "tests").parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "e2e" and ast.unparse(node).endswith("mark.e2e"):
                outside.append(str(path.relative_to(ROOT)))
                break
    assert not outside, f"e2e-marked tests outside tests/e2e (make unit would run them): {outside}"
