"""The import graph of kger's own packages, read with `ast` (no import is executed), against DESIGN.md §3.

Why a static graph: an import cycle or a wrong-way arrow works at run time until a change in import order
breaks it, and the arrows are what keep torch out of `store/` and the query path free of the training stack.
Every `import` counts, module-level or inside a function (a lazy import is still an arrow); only imports under
`if TYPE_CHECKING:` are left out (they never run).
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "retrieval", "store", "training", "prompts")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, skipping the bodies of `if TYPE_CHECKING:` (their `else:` still runs)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


@lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    """module -> the kger modules it imports (the deepest existing module each import names)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    mods = set(files)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if base else a.name for a in node.names]
            for t in targets:
                r = resolve(t)
                if r and r != mod:
                    edges.add(r)
        graph[mod] = edges
    return graph


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per tangle."""
    return [_cycle_in(graph, comp) for comp in tangles(graph)]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest closed path through the component's first module (breadth-first back to it)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def _arrows(src_prefix: str, dst_prefix: str) -> list[str]:
    def under(m: str, p: str) -> bool:
        return m == p or m.startswith(p + ".")

    return sorted(f"{m} -> {t}" for m, ts in import_graph().items() if under(m, src_prefix)
                  for t in ts if under(t, dst_prefix))


# ------------------------------------------------------------------------------------------ the checker itself


def test_the_graph_sees_lazy_relative_imports_and_skips_type_checking():
    """The checker must be able to fail: a cycle made of a function-level import is found, a relative import
    resolves, and an import under TYPE_CHECKING is no arrow."""
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(g) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from x import hidden\nelse:\n    import shown\n"
           "def f():\n    from . import lazy\n")
    names = [(type(n).__name__, getattr(n, "module", None), [a.name for a in n.names])
             for n in _imports(ast.parse(src))]
    assert ("ImportFrom", "x", ["hidden"]) not in names
    assert ("Import", None, ["shown"]) in names and ("ImportFrom", None, ["lazy"]) in names


def test_the_graph_covers_the_packages():
    g = import_graph()
    assert {"retrieval.search", "store.gallery", "training.train", "agent.assistant"} <= set(g)
    assert "retrieval.manifest" in g["retrieval.bundle"]  # a module-level arrow
    assert "retrieval.bundle" in g["retrieval.encoder"]  # a function-level arrow


# ------------------------------------------------------------------------------------------ the rules


def test_no_import_cycle():
    g = import_graph()
    found = [f"{' -> '.join(_cycle_in(g, comp))}  (modules in the tangle: {', '.join(sorted(comp))})"
             for comp in tangles(g)]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_serve_never_imports_cli():
    bad = _arrows("agent.serve", "agent.cli")
    assert not bad, "agent.serve reaches into agent.cli:\n" + "\n".join(bad)


def test_nothing_imports_agent():
    bad = [a for pkg in PACKAGES if pkg != "agent" for a in _arrows(pkg, "agent")]
    assert not bad, "only agent may import agent:\n" + "\n".join(bad)


def test_store_imports_only_retrieval_errors():
    bad = [a for a in _arrows("store", "retrieval") if not a.endswith("-> retrieval.errors")]
    bad += _arrows("store", "training") + _arrows("store", "agent")
    assert not bad, "store may import retrieval.errors only:\n" + "\n".join(bad)


def test_retrieval_and_training_point_one_way():
    """retrieval imports none of the other kger packages; training imports retrieval, never store or agent."""
    bad = [a for pkg in ("store", "training", "agent") for a in _arrows("retrieval", pkg)]
    bad += _arrows("training", "store") + _arrows("training", "agent")
    assert not bad, "\n".join(bad)


# The commands whose job is training (`kger train`, `kger demo` trains a small bundle) are the only agent
# modules that may load the training stack; everything else in agent/ runs at query time.
TRAINING_DOORS = {"agent.cli.train", "agent.cli.demo"}


def test_query_time_agent_code_uses_training_config_only():
    bad = [a for a in _arrows("agent", "training")
           if not a.endswith("-> training.config") and a.split(" -> ")[0] not in TRAINING_DOORS]
    assert not bad, "query-time code may load training.config only:\n" + "\n".join(bad)
