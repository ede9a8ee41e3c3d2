"""No module of elmo_fast imports itself in a circle, counting imports inside functions too: a lazy
import that closes a cycle still ties two modules together and breaks as soon as it moves up."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> dict[str, str]:
    mods = {}
    for dirpath, _, names in os.walk(os.path.join(ROOT, "elmo_fast")):
        for n in names:
            if n.endswith(".py"):
                path = os.path.join(dirpath, n)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(name: str, path: str, mods: dict[str, str]) -> set[str]:
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in mods)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:  # `from . import x` names a module; `from .m import f` the module m
                sub = f"{target}.{a.name}" if target else a.name
                out.add(sub if sub in mods else target)
    return {m for m in out if m in mods and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, done, stack = [], set(), []

    def visit(u):
        stack.append(u)
        for v in sorted(graph[u]):
            if v in stack:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in done:
                visit(v)
        stack.pop()
        done.add(u)

    for m in sorted(graph):
        if m not in done:
            visit(m)
    return cycles


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert graph["elmo_fast.ops.lstm_proj.function"] >= {"elmo_fast.ops.lstm_proj.reference", "elmo_fast._ext"}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
