"""The modules of bagcert_lib import one another without a cycle: lower layers never reach up.
Every import counts, also those inside functions (a deferred import hides a cycle, it does not
remove it)."""
import ast
from pathlib import Path

import bagcert_lib

PACKAGE = Path(bagcert_lib.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module → the bagcert_lib modules it imports (``from . import x`` names module x)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_bagcert_lib_has_no_import_cycle():
    graph = import_graph()
    assert {"bagcert_lib.train", "bagcert_lib.rundir", "bagcert_lib.data.cifar"} <= set(graph)
    assert "bagcert_lib.rundir" in graph["bagcert_lib.train"]        # the finder sees edges
    assert cycles(graph) == []


def test_the_run_folder_is_a_lower_layer():
    """rundir reads and writes the files; it imports none of the modules that use it."""
    users = {"train", "pretrained", "runs", "results", "sweep", "__main__"}
    assert not {f"bagcert_lib.{u}" for u in users} & import_graph()["bagcert_lib.rundir"]
