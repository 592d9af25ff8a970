"""The package layout keeps its promises.

- No import cycles in `lst_data` and `lst_model`, counting imports inside functions too.
- The framework (`lst_data.core`) imports no stage.
- A stage, and `lst_model`, reach a stage only through its public package
  (`lst_data.tokenize`), never its modules (`lst_data.tokenize.tokenizer`).
- `lst_data.format` (the shard contract and its readers) imports nothing of the pipeline:
  a trainer depends on it alone, without Ray, aligners or speech encoders.
- `lst_model`'s training, scoring and generation modules load no Ray, aligner or encoder.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lst_data", "lst_model")
STAGES = ("ingest", "align", "units", "tokenize", "shards", "export")
# What `lst_data.format` may import from the rest of lst_data: the version, and leaf utilities
# of the framework (paths and URLs, digests, the error classes).
FORMAT_MAY_IMPORT = {"lst_data", "lst_data.core.storage", "lst_data.core.digests", "lst_data.core.errors"}
# Third-party and pipeline packages a trainer must not pay for.
PIPELINE_ONLY = ("ray", "pocketsphinx", "torchaudio", "transformers", "montreal_forced_aligner", "sklearn", "lhotse",
                 "lst_data.align", "lst_data.units", "lst_data.ingest", "lst_data.tokenize", "lst_data.shards",
                 "lst_data.export", "lst_data.core.runner", "lst_data.core.ray_env")
# build-task finds the codebook a build wrote by the units stage's file name.
MODEL_REACHES_INTO = {("lst_model.tasks", "lst_data.units.stage")}
# lst_model's command-line module and build-task (it voices tasks through the data pipeline) may load more.
MODEL_ENTRY_POINTS = ("lst_model.cli", "lst_model.tasks")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, module_level_only: bool) -> set[str]:
    """Absolute modules of our packages imported by `path` (at module level only, if asked;
    TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def ours(name: str) -> bool:
        return name.split(".")[0] in PACKAGES

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom) and node.module and ours(node.module):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if ours(a.name))
            body = [] if module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else \
                [n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)]
            visit(body)

    visit(tree.body)
    return found


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def resolved(names: set[str]) -> set[str]:
    """Keep only names that are modules of the packages (drop imported attributes)."""
    return {n for n in names if n in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def import_graph(*, module_level_only: bool) -> dict[str, set[str]]:
    return {name: resolved(imports(path, module_level_only=module_level_only)) - {name}
            for name, path in MODULES.items()}


@pytest.mark.parametrize("module_level_only", [True, False], ids=["module-level", "with-function-level"])
def test_no_import_cycles(module_level_only):
    """A function-level import that closes a cycle hides it from Python, not from a reader."""
    cycle = find_cycle(import_graph(module_level_only=module_level_only))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "lst_data" and len(parts) > 1 and parts[1] in STAGES else None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_respect_the_layering(name):
    used = resolved(imports(MODULES[name], module_level_only=False))
    if name.startswith("lst_data.core"):
        assert not {u for u in used if stage_of(u)}, f"{name}: the framework must not import a stage"
        return
    if name.startswith("lst_data.format"):
        outside = sorted(u for u in used if not u.startswith("lst_data.format") and u not in FORMAT_MAY_IMPORT)
        assert outside == [], f"{name}: the shard format imports the pipeline: {outside}"
        return
    own = stage_of(name)
    if own is None and name.startswith("lst_data"):
        return  # the top-level modules (cli, config, demo) compose the stages
    internals = sorted(u for u in used if stage_of(u) not in (None, own) and u != f"lst_data.{stage_of(u)}"
                       and (name, u) not in MODEL_REACHES_INTO)
    assert internals == [], f"{name} reaches into another stage's modules: {internals}"


def loaded_modules(modules: list[str]) -> list[str]:
    """Which PIPELINE_ONLY modules a fresh interpreter holds after importing `modules`."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(n for n in sys.modules if n.startswith({PIPELINE_ONLY!r}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_the_format_package_loads_no_pipeline():
    """A trainer that reads shards imports lst_data.format and nothing of the pipeline."""
    format_modules = sorted(m for m in MODULES if m.startswith("lst_data.format"))
    assert "lst_data.format.loader" in format_modules and "lst_data.format.reader" in format_modules
    assert loaded_modules(format_modules) == []


def test_the_models_training_side_loads_no_pipeline():
    model_modules = sorted(m for m in MODULES if m.startswith("lst_model") and m not in MODEL_ENTRY_POINTS)
    assert "lst_model.train" in model_modules
    assert loaded_modules(model_modules) == []


def test_the_probe_sees_a_pipeline_import():
    """The check above would notice: importing the align stage loads aligner modules."""
    assert "lst_data.align.stage" in loaded_modules(["lst_data.align.stage"])
