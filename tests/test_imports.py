"""The package's module-level imports form no cycle (a walk of src/mmdistill/**/*.py with ast)."""
import ast
from pathlib import Path

import mmdistill

PACKAGE = Path(mmdistill.__file__).parent


def module_name(path: Path) -> str:
    parts = ["mmdistill", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path, modules: set[str], *, anywhere: bool = False) -> set[str]:
    """The package modules ``path`` imports at module level (not inside functions or classes;
    ``anywhere``: there too), relative imports resolved; ``from pkg import name`` counts
    ``pkg.name`` when that is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in (ast.walk(tree) if anywhere else tree.body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                # the importer's own packages are imported before it, never because of it
                if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                    found.add(prefix)
    return found


def import_graph(anywhere: bool = False) -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: module_level_imports(path, set(files), anywhere=anywhere) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_sees_the_package():
    graph = import_graph()
    assert "mmdistill.config" in graph and "mmdistill.errors" in graph["mmdistill.config"]
    assert "mmdistill.data" in graph["mmdistill.runs"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_data_and_models_never_import_the_config():
    """The config validates against the data and model registries; they never reach back into it,
    not even from inside a function (the config <-> data cycle this package once had)."""
    graph = import_graph(anywhere=True)
    back = sorted(m for m, deps in graph.items() if m.startswith(("mmdistill.data", "mmdistill.models"))
                  and "mmdistill.config" in deps)
    assert not back, f"{', '.join(back)} import mmdistill.config"
