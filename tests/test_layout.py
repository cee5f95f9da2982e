"""The package layout docs/architecture.md promises, checked by walking every import of every module.

- `core` imports no stage package; `slurm` imports only `core`; stages import only what is upstream of
  them (evaluation <- data_pipeline <- pretrain <- midtrain; release beside midtrain); `atom` (the CLI) may import all.
- No module imports itself through others (no cycles), counting imports inside functions too.
- No package uses another package's private names (`from x import _y` or `x._y`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "core": set(),
    "evaluation": {"core"},
    "data_pipeline": {"core", "evaluation"},
    "pretrain": {"core", "data_pipeline", "evaluation"},
    "midtrain": {"core", "data_pipeline", "evaluation", "pretrain"},
    "release": {"core", "data_pipeline", "evaluation", "pretrain", "midtrain"},
    "slurm": {"core"},
    "atom": {"core", "data_pipeline", "evaluation", "pretrain", "midtrain", "release", "slurm"},
}
PACKAGES = tuple(ALLOWED)


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def modules() -> dict[str, Path]:
    return {module_name(f): f for p in PACKAGES for f in sorted((ROOT / p).rglob("*.py"))}


def imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every absolute import in the file, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno


def resolve(target: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The project modules an import statement loads (`from pkg import mod` loads pkg.mod)."""
    out = [target] if target in known else []
    out += [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for mod, path in known.items():
        for target, names, _ in imports(path):
            graph[mod].update(t for t in resolve(target, names, known) if t != mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_packages_import_only_what_is_upstream_of_them() -> None:
    wrong = []
    for mod, path in modules().items():
        package = mod.split(".")[0]
        for target, _, line in imports(path):
            top = target.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {package} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_private_names_across_packages() -> None:
    wrong = []
    for mod, path in modules().items():
        package = mod.split(".")[0]
        aliases: dict[str, str] = {}
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                for alias in node.names:
                    if top in PACKAGES and top != package:
                        aliases[alias.asname or alias.name] = node.module
                        if alias.name.startswith("_"):
                            wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in PACKAGES and alias.name.split(".")[0] != package:
                        aliases[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    assert not wrong, "private names used across packages:\n" + "\n".join(wrong)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_cycle_finder_finds_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected
