"""The hub package's shape: no import circles between its modules (lazy imports inside
functions count too: they only hide a circle)."""

import ast
from pathlib import Path

HUB = Path(__file__).resolve().parents[1] / "hub"


def hub_imports():
    """{module: the hub modules it imports}, read from the source with ast."""
    modules = {path.stem for path in HUB.glob("*.py")}
    graph = {}
    for path in HUB.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 or node.module == "hub":  # from . import x, from hub import x
                    deps |= {node.module.split(".")[0]} if node.level and node.module else \
                        {alias.name for alias in node.names}
                elif node.module and node.module.startswith("hub."):
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("hub.")}
        graph[path.stem] = (deps & modules) - {path.stem}
    return graph


def find_cycle(graph):
    """One import circle as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_circles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_hub_package_has_no_import_circle():
    graph = hub_imports()
    # the graph is really read: these edges exist
    assert "settings" in graph["config"] and "gpus" in graph["gpu_store"]
    assert "secretfiles" in graph["auth"] and "gpu_store" in graph["startup"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_settings_is_the_only_reader_of_the_environment():
    readers = sorted(path.name for path in HUB.glob("*.py")
                     if "environ" in path.read_text() and path.name != "settings.py")
    # cli.py and config.py pass an `environ` through to hub.settings; they read nothing of it
    for name in readers:
        text = (HUB / name).read_text()
        assert "os.environ" not in text and "getenv" not in text, name
