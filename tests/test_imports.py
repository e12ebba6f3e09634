"""Imports flow one way: no module of `ilora` reaches itself again, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the `ilora` modules it imports anywhere in its file (top level or inside functions)."""
    modules = {module_name(p, src): p for p in (src / "ilora").rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target in modules:  # `from pkg import submodule` names the submodule, else the package/module
                    graph[name].add(target)
                    break
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_sees_a_lazy_import_circle(tmp_path):
    pkg = tmp_path / "ilora"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from ilora.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from ilora.a import g\n")
    assert find_cycle(import_graph(tmp_path)) == ["ilora.a", "ilora.b", "ilora.a"]


def test_ilora_has_no_import_cycles():
    graph = import_graph()
    assert "ilora.encoders.cache" in graph and "ilora.data.synthetic" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
