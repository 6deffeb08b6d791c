"""The package's shape: no import cycle among convscope's modules, and modules of a readable size.

Only module-level imports count: an import inside a function runs when it is called, which is how
the CLI stays torch-free for ``--help``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import convscope

ROOT = Path(convscope.__file__).parent
# Generated data, not code: the 1,000 ImageNet labels.
DATA_MODULES = {"convscope.imagenet_labels"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.parse(path.read_text()).body:  # module level only
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from pkg import sub` depends on the submodule; `from pkg import name` on pkg
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [mod] + subs
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def _cycle(graph):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_graph_sees_real_imports():
    graph = _graph()
    assert "convscope.errors" in graph["convscope.hooks"]
    assert "convscope.atlas.store" in graph["convscope.atlas"]


def test_no_import_cycle():
    graph = _graph()
    # A package importing its own submodules in __init__ is not a cycle unless they import it back.
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_modules_are_of_a_readable_size():
    big = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        n = len(path.read_text().splitlines())
        if n > 650 and name not in DATA_MODULES:
            big[name] = n
    assert not big, big
