"""No import circle anywhere in the project: ``glai``, ``glai_kernels`` and ``bench``.

The graph is read from the source with ``ast``, not from what an import happens to execute: every ``import`` and
``from ... import`` counts, at module level and inside functions and methods (a deferred import is still a
dependency a reader has to follow), relative and absolute. An edge goes to the module named: ``from glai.nn import
GLAIMLP`` is an edge to ``glai.nn``, ``from glai import nn`` an edge to the submodule ``glai.nn``, and ``from glai
import convert`` an edge to ``glai`` itself. So a package ``__init__``'s re-exports are edges from the ``__init__``
module only: importing ``glai.nn`` runs ``glai/__init__.py`` first, but that is not counted as ``glai.nn``
depending on everything the package re-exports.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("glai", "glai_kernels", "bench")


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    files = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def _owner(name: str, modules) -> str | None:
    """The deepest module of the project that ``name`` (a module or a name inside one) lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules, packages=PACKAGES) -> dict[str, int]:
    """The project modules ``module`` imports anywhere in its file, each with the line of its first import."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    edges: dict[str, int] = {}

    def add(target: str | None, line: int) -> None:
        if target is not None and target != module:
            edges.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in packages:
                    add(_owner(alias.name, modules), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is this module's package, each further dot one package up
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.split(".")[0] not in packages:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else _owner(source, modules), node.lineno)
    return edges


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, dict[str, int]]:
    """Module -> {imported module: line}, over every module of ``packages`` under ``root``."""
    modules = module_files(root, packages)
    return {m: imports_of(m, path, modules, packages) for m, path in modules.items()}


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle ``[a, b, ..., a]`` through each strongly connected component of more than one module
    (Tarjan's algorithm, iterative so that a deep chain cannot hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
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
                    components.append(sorted(component))
    return [_shortest_cycle(graph, set(c), c[0]) for c in sorted(components)]


def _shortest_cycle(graph, members: set[str], start: str) -> list[str]:
    """Breadth first from ``start`` back to it, inside one strongly connected component."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def describe(graph, cycle: list[str], root: Path = ROOT) -> str:
    """``a -> b -> a``, each step with the line that makes it."""
    files = module_files(root, sorted({m.split(".")[0] for m in cycle}))
    steps = [
        f"  {a} -> {b}  ({files[a].relative_to(root)}:{graph[a][b]})" for a, b in zip(cycle[:-1], cycle[1:])
    ]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_no_import_circle_in_the_project():
    graph = import_graph()
    assert {"glai.nn", "glai_kernels.layout", "bench.harness"} <= set(graph)  # the walk found the packages
    found = circles(graph)
    assert not found, f"{len(found)} import circle(s):\n" + "\n".join(describe(graph, c) for c in found)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_graph_sees_deferred_relative_and_re_exported_imports(tmp_path):
    # A circle closed only by an import inside a method, written relatively on one side and absolutely on the
    # other, the shape of the old glai.conversion <-> glai.nn; and one through a sub-package's parent.
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from . import model\nfrom .convert import convert\n",
            "pkg/model.py": "class Block:\n    def back(self):\n        from .convert import back\n",
            "pkg/convert.py": "import torch\nfrom pkg.model import Block\ndef convert(): ...\ndef back(): ...\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/runner.py": "def run():\n    from ..sub import search\n",
            "pkg/sub/search.py": "from .. import sub\nfrom ..sub.runner import run\nimport pkg.model as m\n",
            "pkg/leaf.py": "from pkg import convert\nfrom pkg import model\n",
        },
    )
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg"] == {"pkg.model": 1, "pkg.convert": 2}
    assert graph["pkg.model"] == {"pkg.convert": 3}  # inside the method, relative
    assert graph["pkg.convert"] == {"pkg.model": 2}  # torch is no project module
    assert graph["pkg.sub.search"] == {"pkg.sub": 1, "pkg.sub.runner": 2, "pkg.model": 3}
    # `from pkg import convert` names the module pkg.convert (the package's attribute of that name is a
    # function, but the file is what a reader opens); the package __init__'s own imports are its edges only.
    assert graph["pkg.leaf"] == {"pkg.convert": 1, "pkg.model": 2}
    found = circles(graph)
    assert found == [
        ["pkg.convert", "pkg.model", "pkg.convert"],
        ["pkg.sub.runner", "pkg.sub.search", "pkg.sub.runner"],
    ]
    message = describe(graph, found[0], tmp_path)
    assert "pkg.model -> pkg.convert  (pkg/model.py:3)" in message


def test_re_exports_alone_make_no_circle(tmp_path):
    # The package imports its modules to re-export them, and the modules import each other one way only.
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from .model import Block\nfrom .convert import convert\n",
            "pkg/model.py": "from .layout import words\n",
            "pkg/layout.py": "def words(): ...\n",
            "pkg/convert.py": "from .model import Block\ndef f():\n    from pkg.layout import words\n",
        },
    )
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.convert"] == {"pkg.model": 1, "pkg.layout": 3}
    assert circles(graph) == []
