"""What a vLLM tree's launchers do, read from its own source (ast and text, nothing imported).

The audit rebuilds vLLM's launches; where two trees launch a kernel differently, the case asks
the tree, never a version number: which layout the attention backend's KV cache has
(`flash_cache_layout`), which literal a launcher passes (`launcher_literal`), a module constant
(`module_constant`).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from types import ModuleType
from typing import Any

_TRITON_ATTN = "vllm/v1/attention/backends/triton_attn.py"
_LAYOUTS = "vllm/v1/kv_cache_layout.py"
_PREFERENCE = "vllm/v1/attention/backends/utils.py"


def tree_root(module: ModuleType) -> Path | None:
    """The source tree a loaded vLLM module came from (`vllm.a.b` from <root>/vllm/a/b.py); None
    for a module that is no file of a tree."""
    file, name = getattr(module, "__file__", None), getattr(module, "__name__", "")
    if not file or not name.startswith("vllm."):
        return None
    return Path(file).resolve().parents[name.count(".")]


def parse(path: Path) -> ast.Module | None:
    """The syntax tree of a tree's file, None where there is no such file. Parsed once per content
    (path, modification time, size): the audit asks one tree many questions, once per case."""
    if not path.is_file():
        return None
    st = path.stat()
    return _parsed(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _parsed(path: str, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(Path(path).read_text())


def _source(module: ModuleType) -> ast.Module | None:
    file = getattr(module, "__file__", None)
    return parse(Path(file)) if file else None


def _function(tree: ast.Module | None, name: str) -> ast.FunctionDef | None:
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def module_constant(root: Path | None, rel: str, name: str) -> Any:
    """The literal a module assigns to `name` at its top level; None when it assigns none."""
    tree = parse(root / rel) if root else None
    for node in tree.body if tree else ():
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None


def launcher_literal(module: ModuleType, function: str, name: str) -> Any:
    """The one literal value `function` of `module`'s file gives `name`, as a keyword argument
    (`BLOCK_SIZE=8192`) or an assignment (`BLOCK_M = 128`); computed values are not literals.
    None when it gives none or more than one (`BLOCK_M = 128` in one branch, 32 in another)."""
    node = _function(_source(module), function)
    found = set()
    for sub in ast.walk(node) if node else ():
        named = (isinstance(sub, ast.keyword) and sub.arg == name) or (
            isinstance(sub, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in sub.targets)
        )
        value = sub.value if named else None  # type: ignore[attr-defined]
        if isinstance(value, ast.Constant):
            found.add(value.value)
    return found.pop() if len(found) == 1 else None


def launcher_uses(module: ModuleType, function: str, name: str) -> bool:
    """Whether `function` of `module`'s file reads the name `name` (e.g. a constant it folds in)."""
    node = _function(_source(module), function)
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node)) if node else False


def _calls(node: ast.AST, method: str) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == method for n in ast.walk(node))


@functools.cache  # every attention case asks it, several times per build
def flash_cache_layout(root: Path | None) -> tuple[int, ...] | None:
    """How TRITON_ATTN's forward gets its key and value caches:

    * None: `kv_cache.unbind(1)` of a cache [blocks, 2, block, kv_heads, head];
    * a permutation: one packed cache of logical shape [blocks, kv_heads, block, 2 * head],
      `transpose(1, 2)` then `split(head, dim=-1)`, stored in the physical order of the layout
      vLLM resolves by default (the first of `_DEFAULT_LAYOUT_PREFERENCE`, as axes of that 4D
      view: e.g. (0, 2, 1, 3) = [blocks, block, kv_heads, 2 * head] in memory).
    """
    if root is None:
        return None
    forward = _function(parse(root / _TRITON_ATTN), "forward")
    if forward is None or _calls(forward, "unbind") or not _calls(forward, "split"):
        return None
    preference = parse(root / _PREFERENCE)
    first = None
    for node in preference.body if preference else ():
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_DEFAULT_LAYOUT_PREFERENCE" for t in node.targets
        ):
            first = node.value.elts[0].attr if isinstance(node.value, ast.Tuple) else None
    layouts = parse(root / _LAYOUTS)
    for node in ast.walk(layouts) if layouts and first else ():
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == first for t in node.targets
        ):
            order = ast.literal_eval(node.value)  # [L, B, H, N, C] -> physical order, L dropped
            return tuple(i - 1 for i in order if i != 0)
    return (0, 1, 2, 3)  # a packed cache and no layout preference: stored in its logical order
