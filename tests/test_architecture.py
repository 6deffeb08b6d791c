"""The package's shape: no import cycle among convscope's modules, every import pointing down the
floors that docs/architecture.md draws, and modules of a readable size.

Every import counts, function-level ones included: an import inside a function runs later (which is
how the CLI stays torch-free for ``--help``), but a cycle made that way is still a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import convscope

ROOT = Path(convscope.__file__).parent
# Generated data, not code: the 1,000 ImageNet labels.
DATA_MODULES = {"convscope.imagenet_labels"}
#: The floors of docs/architecture.md, bottom to top, by the first name under ``convscope``. A module
#: imports only from its own floor or the ones below.
FLOORS = (
    ("errors", "files", "stores", "runtime", "progress", "choices", "lazy", "pngfile"),
    ("geo", "exif", "formats", "data", "crops", "sketch", "ocr"),
    ("hooks",),
    ("model_names", "models", "checkpoints", "layers", "saturation", "vocab", "imagenet_labels"),
    ("scan", "scan_settings", "backproject", "display", "featvis", "explain", "index", "evolve", "probe",
     "classify", "distributed", "fold", "samepad"),
    ("atlas", "health", "featvis.export"),
    ("web", "cli", "__main__"),
)


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
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports too
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


def _floor(module: str) -> int | None:
    parts = module.split(".")[1:]
    if not parts:
        return len(FLOORS)  # the package's own __init__ re-exports from every floor
    best = None
    for i, names in enumerate(FLOORS):
        for name in names:
            prefix = name.split(".")
            if parts[: len(prefix)] == prefix and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    return None if best is None else best[0]


def test_graph_sees_function_level_imports():
    # cli/_common.py imports convscope.models (torch) only inside a function, to keep --help light
    assert "convscope.models" in _graph()["convscope.cli._common"]


def test_every_module_has_a_floor():
    graph = _graph()
    assert not [m for m in graph if _floor(m) is None]


def test_imports_point_down_the_floors():
    graph = _graph()
    up = sorted(f"{a} (floor {_floor(a) + 1}) imports {b} (floor {_floor(b) + 1})"
                for a in graph for b in graph[a] if _floor(b) > _floor(a))
    assert not up, "\n".join(up)


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
