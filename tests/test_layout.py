"""The house in stages, read from the source with `ast`: each stage a folder, imports only going
down the pipeline (core < cuda < spec < sources < build < verify < run < demo < cli), no cycle,
no file over 400 lines, and no version of the stack written in code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "stackforge"
STAGES = ("core", "cuda", "spec", "sources", "build", "verify", "run", "demo", "cli")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, at module level) for every `stackforge` import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stackforge"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [(n, node.lineno, id(node) in top) for n in [node.module, *names]]
        elif isinstance(node, ast.Import):
            found += [
                (a.name, node.lineno, id(node) in top) for a in node.names if a.name.startswith("stackforge")
            ]
    return found


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_each_stage_is_a_folder_and_nothing_else_is_flat():
    assert all((PACKAGE / s / "__init__.py").is_file() for s in STAGES)
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py"], flat


def test_imports_only_go_down_the_pipeline():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        here = _stage(name)
        for target, line, _ in _imports(path):
            there = _stage(target)
            if here and there and STAGES.index(there) > STAGES.index(here):
                wrong.append(f"{path.relative_to(REPO_ROOT)}:{line}: {here} imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_among_modules():
    """Module-level imports form no cycle (imports inside functions are for start-up time only)."""
    modules = _modules()
    graph = {
        name: {t for t, _, top in _imports(path) if top and t in modules and t != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*trail, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*trail, node])):
                return cycle
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name, [])
            assert cycle is None, " -> ".join(cycle or [])


def test_no_file_over_the_limit():
    long = {
        str(p.relative_to(REPO_ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_command_modules_load_no_stage_at_import():
    """`stackforge --help` builds the parser from cli/ alone: command modules import a stage only
    inside the function that runs the command (core is fine: console and options)."""
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for target, line, top in _imports(path):
            stage = _stage(target)
            assert not top or stage in ("core", "cli", None), (
                f"{path.name}:{line}: imports {target} at load time"
            )


def test_versions_of_the_stack_live_in_data_only():
    """torch/triton/vllm versions come from stack.yaml; no source file spells one."""
    import yaml

    versions = yaml.safe_load((REPO_ROOT / "stack.yaml").read_text())["packages"].values()
    pattern = re.compile("|".join(rf"(?<![\d.]){re.escape(v)}(?![\d])" for v in versions))
    hits = [
        f"{p.relative_to(REPO_ROOT)}:{i}: {line.strip()}"
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "\n".join(hits)
