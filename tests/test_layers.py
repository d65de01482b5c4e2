"""The import graph of the project's packages: no cycles, and layers that only look down.

Every `import` and `from ... import` counts, also those inside functions: a
function-local import is still a dependency, only a later one. The layer of a module
is the first prefix in LAYERS that names it; a module may import modules of a lower
layer, and modules of its own layer only within its own group.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("converter", "passes", "calibration", "plugins_cuda")

# (group, module prefixes, rank): lower ranks are lower layers.
LAYERS: list[tuple[str, tuple[str, ...], int]] = [
    ("foundation", ("converter.core",), 0),
    ("graph-ir", ("passes.graph_utils", "passes.model_utils", "passes.pattern_utils"), 1),
    ("plugins_cuda", ("plugins_cuda",), 2),
    ("calibration", ("calibration",), 2),
    ("passes", ("passes",), 3),
    ("backends", ("converter.backends",), 3),
    ("demos", ("converter.demos",), 3),
    ("verification", ("converter.verification",), 4),
    ("pipelines", ("converter.pipelines",), 5),
    ("api", ("converter.api",), 6),
    ("cli", ("converter.cli",), 7),
    ("package", ("converter",), 0),  # converter/__init__.py
]


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imported(name: str, path: Path, node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The project modules an import statement loads (the module itself, or a submodule it names)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        base = node.module or ""
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = []
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target:
            found.append(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                deps.update(d for d in _imported(name, path, node, modules) if d != name)
        graph[name] = deps
    return graph


def layer_of(module: str) -> tuple[str, int]:
    for group, prefixes, rank in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return group, rank
    raise AssertionError(f"{module}: in no layer; add it to LAYERS in tests/test_layers.py")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
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
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_layers_only_look_down():
    violations = []
    for module, deps in sorted(import_graph().items()):
        group, rank = layer_of(module)
        for dep in sorted(deps):
            dep_group, dep_rank = layer_of(dep)
            if dep_rank > rank or (dep_rank == rank and dep_group != group):
                violations.append(f"{module} ({group}) imports {dep} ({dep_group})")
    assert violations == []


def test_lower_packages_import_only_the_foundation_from_converter():
    bad = [
        f"{module} imports {dep}"
        for module, deps in import_graph().items()
        if not module.startswith("converter")
        for dep in deps
        if dep.startswith("converter") and not dep.startswith("converter.core")
    ]
    assert bad == []


def test_the_checker_sees_function_local_imports_and_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from passes.manager import run_passes\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _imported("converter.api", REPO / "converter/api.py", node, _modules()) == ["passes.manager"]
