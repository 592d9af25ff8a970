"""The package layout keeps its promises: no import cycles, the framework (`lst_data.core`)
imports no stage, and a stage reaches another stage only through that stage's public
package (`lst_data.tokenize`), never its modules (`lst_data.tokenize.tokenizer`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lst_data"
STAGES = ("ingest", "align", "units", "tokenize", "shards")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, module_level_only: bool) -> set[str]:
    """Absolute lst_data modules imported by `path` (at module level only, if asked; TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lst_data"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("lst_data"))
            body = [] if module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else \
                [n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)]
            visit(body)

    visit(tree.body)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolved(names: set[str]) -> set[str]:
    """Keep only names that are modules of the package (drop imported attributes)."""
    return {n for n in names if n in MODULES}


def test_no_import_cycles_at_module_level():
    graph = {name: resolved(imports(path, module_level_only=True)) - {name} for name, path in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_respect_the_layering(name):
    used = resolved(imports(MODULES[name], module_level_only=False))
    if name.startswith("lst_data.core"):
        assert not {u for u in used if stage_of(u)}, f"{name}: the framework must not import a stage"
        return
    own = stage_of(name)
    if own is None:
        return
    internals = sorted(u for u in used if stage_of(u) not in (None, own) and u != f"lst_data.{stage_of(u)}")
    assert internals == [], f"{name} reaches into another stage's modules: {internals}"
