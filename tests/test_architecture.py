"""The package's structure: no import cycles (lazy imports included), and lower rooms never import higher ones.

Walks every module of tsm_keras with `ast` (imports at the top and inside functions alike) — the same
check anyone can run: `python -m pytest tests/test_architecture.py -q`.
"""

import ast
import functools
import os

import pytest

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tsm_keras")

# Floors, lowest first: a module may import its own floor's rooms and the floors below, never above.
FLOORS = [
    ["tsm_keras.errors", "tsm_keras.disk", "tsm_keras.progress", "tsm_keras.config", "tsm_keras.runtime",
     "tsm_keras.layers", "tsm_keras.saved_models"],
    ["tsm_keras.runs", "tsm_keras.models", "tsm_keras.data"],
    ["tsm_keras.convert"],
    ["tsm_keras.loading"],
    ["tsm_keras.evaluation", "tsm_keras.export", "tsm_keras.predict"],
    ["tsm_keras.training"],
    ["tsm_keras.modes"],
]
# Rooms of one floor that must not know each other.
FORBIDDEN = [
    ("tsm_keras.data", "tsm_keras.models"),  # the data pipeline knows nothing of the model
    ("tsm_keras.models", "tsm_keras.data"),
    ("tsm_keras.models", "tsm_keras.runs"),
    ("tsm_keras.data", "tsm_keras.runs"),
    ("tsm_keras.predict", "tsm_keras.export"),  # predict reads exports through tsm_keras.saved_models
    ("tsm_keras.export", "tsm_keras.predict"),
    ("tsm_keras.evaluation", "tsm_keras.export"),
    ("tsm_keras.export", "tsm_keras.evaluation"),
    ("tsm_keras.evaluation", "tsm_keras.predict"),
]


def _module_name(path):
    relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-len(".py")]
    parts = relative.split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules():
    modules = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                modules[_module_name(path)] = path
    return modules


@functools.lru_cache(maxsize=None)  # parsed once per process, not once per parametrized module (14 s -> 0.3 s)
def import_graph():
    """{module: {imported tsm_keras modules}} with every import statement of the module's file (do not modify)."""
    modules = package_modules()
    graph = {}
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        targets = set()
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    package = package[:len(package) - node.level + 1]
                    base = ".".join(package + ([base] if base else []))
                # `from tsm_keras.data import augment` imports the submodule when there is one.
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                         for alias in node.names]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != module and name.startswith("tsm_keras"):
                    targets.add(name)
        graph[module] = targets
    return graph


def _room(module):
    for floor, rooms in enumerate(FLOORS):
        for room in rooms:
            if module == room or module.startswith(room + "."):
                return floor, room
    return None, None


def find_cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node, counter=[0]):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_walker_sees_lazy_imports_and_would_report_a_cycle():
    graph = import_graph()
    assert "tsm_keras.loading" in graph["tsm_keras.predict"]  # imported inside a function
    assert "tsm_keras.data.augment" in graph["tsm_keras.export.saved_model"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_every_module_has_a_floor():
    unplaced = [m for m in package_modules() if m != "tsm_keras" and _room(m)[0] is None]
    assert unplaced == []


@pytest.mark.parametrize("module", sorted(m for m in package_modules() if m != "tsm_keras"))
def test_lower_rooms_never_import_higher_ones(module):
    floor, room = _room(module)
    wrong = []
    for target in sorted(import_graph()[module]):
        if target == "tsm_keras":
            wrong.append(f"{target} (the public facade: import the module that defines the name)")
            continue
        target_floor, target_room = _room(target)
        if target_room == room:
            continue
        if target_floor > floor:
            wrong.append(f"{target} (floor {target_floor} > {floor})")
        elif (room, target_room) in FORBIDDEN:
            wrong.append(f"{target} ({room} must not know {target_room})")
    assert wrong == [], f"{module} imports {wrong}"
