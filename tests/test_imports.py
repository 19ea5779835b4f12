"""The package's imports form a strict stack (a walk of src/mmdistill/**/*.py with ast, imports
inside functions counted): no cycle, no module importing a floor above its own (:data:`FLOORS`),
and none of the edges :data:`NEVER` names. A failure names the offending edge.

Run ``python -c "import sys; sys.path.insert(0, 'tests'); import test_imports as t; t.report()"``
to print the cycle finder's answer and every rule."""
import ast
from pathlib import Path
from typing import NamedTuple

import mmdistill

PACKAGE = Path(mmdistill.__file__).parent

#: the stack, bottom first: a module may import modules of its own floor or below, never above (an
#: entry names a module or a package with its submodules; ``mmdistill`` is the package's own
#: ``__init__``). A new top-level module or package gets a line here saying where it stands.
FLOORS = [
    ("errors", "options", "recipes"),
    ("registry", "rundir", "plugins"),  # base services
    ("data",),
    ("models", "optim"),
    ("losses", "evaluate", "checkpoint"),  # parts, metrics, model I/O
    ("distill",),  # the loop, tasks, teachers, DDP and devices; with their options models
    ("config",),  # composes every section's options model
    ("api", "checkpoint_data"),  # the Python API; a checkpoint's data, rebuilt
    ("guard",),
    ("report", "export"),
    ("runs",),  # config-driven runs writing a run directory
    ("auto", "diagnose", "demo"),  # workflows
    ("cli",),
    ("__main__", "mmdistill"),
]


class Never(NamedTuple):
    """No module under ``importers`` imports one under ``imported`` (except the ``exempt``), and why."""

    importers: tuple[str, ...]
    imported: tuple[str, ...]
    why: str
    exempt: tuple[str, ...] = ()


#: edges that must never exist, each with the reason a failure gives (most would also be upward
#: edges; some are edges the floors allow: the report reading code, the runtime or errors importing)
NEVER = [
    Never(("distill",), ("config",), "the loop's options live beside the loop (TrainConfig in distill/engine.py); "
          "config.py composes the sections"),
    Never(("export",), ("runs",), "rebuilding a checkpoint's data is mmdistill.checkpoint_data; runs "
          "(evaluate --cost) stands above export"),
    Never(("data", "models", "losses", "optim"), ("distill",), "the parts stand below the loop that uses them"),
    Never(("data", "models", "losses", "optim", "checkpoint", "evaluate"), ("config",),
          "the config validates against the parts' registries; they never reach back into it (the config <-> "
          "data cycle this package once had)"),
    Never(("evaluate", "checkpoint"), ("distill",), "metrics and model I/O serve any model; the loop uses them"),
    Never(("api",), ("runs", "export", "auto", "diagnose", "demo"),
          "the Python API stands below the config-driven runs built on it"),
    Never(("report",), ("data", "models", "losses", "distill", "checkpoint", "config"),
          "the report reads run directories' files, never the code that wrote them"),
    Never(("export.runtime",), ("",), "copied into every export folder as mmdistill_runtime.py: it runs "
          "without the package"),
    Never(("errors",), ("",), "the leaf every module may import"),
    Never(("",), ("cli",), "the library never imports the CLI; the CLI parses and calls the library",
          exempt=("__main__",)),
]


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


def _name(entry: str) -> str:
    return f"mmdistill.{entry}" if entry and entry != "mmdistill" else "mmdistill"


def _under(module: str, entry: str) -> bool:
    """Whether ``module`` is ``entry`` (a FLOORS or NEVER entry; "" is the whole package) or inside it."""
    if entry == "mmdistill":
        return module == "mmdistill"
    name = _name(entry)
    return not entry or module == name or module.startswith(name + ".")


def floor_of(module: str) -> int | None:
    """The floor of ``module`` (its longest matching entry in :data:`FLOORS`), None when unlisted."""
    matches = [(len(entry), floor) for floor, entries in enumerate(FLOORS) for entry in entries if _under(module, entry)]
    return max(matches)[1] if matches else None


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    """Each edge from a module to one on a higher floor, as a line naming both and their floors."""
    found = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            here, there = floor_of(module), floor_of(dep)
            if here is not None and there is not None and there > here:
                found.append(f"{module} (floor {here}: {', '.join(FLOORS[here])}) imports {dep} "
                             f"(floor {there}: {', '.join(FLOORS[there])})")
    return found


def broken_rules(graph: dict[str, set[str]]) -> list[str]:
    """Each edge a :data:`NEVER` rule forbids, as a line naming the edge and the rule's reason."""
    found = []
    for rule in NEVER:
        for module, deps in sorted(graph.items()):
            if not any(_under(module, e) for e in rule.importers) or any(_under(module, e) for e in rule.exempt):
                continue
            for dep in sorted(deps):
                if any(_under(dep, e) for e in rule.imported):
                    found.append(f"{module} imports {dep}: {rule.why}")
    return found


def report() -> None:
    """Print the cycle finder's answer on the whole graph and every rule."""
    graph = import_graph(anywhere=True)
    cycle = find_cycle(graph)
    print("cycle (imports inside functions counted):", " -> ".join(cycle) if cycle else None)
    for i, entries in enumerate(FLOORS):
        print(f"floor {i}: {', '.join(entries)}")
    for rule in NEVER:
        whole = "anything in mmdistill"
        who = ", ".join(e or whole for e in rule.importers)
        exempt = f" (except {', '.join(rule.exempt)})" if rule.exempt else ""
        print(f"never: {who}{exempt} -> {', '.join(e or whole for e in rule.imported)}: {rule.why}")
    print("upward edges:", upward_edges(graph) or None)
    print("broken rules:", broken_rules(graph) or None)


def test_the_walk_sees_the_package():
    graph = import_graph()
    assert "mmdistill.config" in graph and "mmdistill.errors" in graph["mmdistill.config"]
    assert "mmdistill.data" in graph["mmdistill.runs"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    """Not even through an import inside a function, which only hides a cycle until that function runs."""
    cycle = find_cycle(import_graph(anywhere=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_floor():
    unlisted = sorted(m for m in import_graph() if floor_of(m) is None)
    assert not unlisted, f"{', '.join(unlisted)}: not in FLOORS; add a line saying where it stands in the stack"


def test_no_module_imports_a_floor_above_its_own():
    upward = upward_edges(import_graph(anywhere=True))
    assert not upward, "\n".join(upward)


def test_no_edge_a_rule_forbids():
    broken = broken_rules(import_graph(anywhere=True))
    assert not broken, "\n".join(broken)


def test_the_rules_catch_an_offending_edge():
    graph = {"mmdistill.distill.engine": {"mmdistill.config"}, "mmdistill.export.bundle": {"mmdistill.runs"},
             "mmdistill.data.npz": {"mmdistill.distill.tasks"}, "mmdistill.runs": {"mmdistill.cli"},
             "mmdistill.__main__": {"mmdistill.cli"}, "mmdistill.export.runtime": {"mmdistill.errors"}}
    broken = broken_rules(graph)
    for edge in ("mmdistill.distill.engine imports mmdistill.config", "mmdistill.export.bundle imports mmdistill.runs",
                 "mmdistill.data.npz imports mmdistill.distill.tasks", "mmdistill.runs imports mmdistill.cli",
                 "mmdistill.export.runtime imports mmdistill.errors"):
        assert any(line.startswith(edge + ": ") for line in broken), (edge, broken)
    assert not any(line.startswith("mmdistill.__main__") for line in broken)
    assert upward_edges({"mmdistill.data.npz": {"mmdistill.config"}}) == [
        "mmdistill.data.npz (floor 2: data) imports mmdistill.config (floor 6: config)"]
    assert floor_of("mmdistill.distill.engine") == floor_of("mmdistill.distill") and floor_of("mmdistill") == len(FLOORS) - 1
