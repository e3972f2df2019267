"""Derived packages: a pinned conda-forge artifact plus our patch series on its Python files.

conda-forge's CUDA 12.9 builds of PyTorch and Triton already carry code for sm_60 and sm_70 (its
libtorch is compiled for them; Triton's ptxas comes from the CUDA toolkit at run time), and every
patch of our pytorch and triton series changes Python files that the packages ship verbatim. So
instead of compiling for hours, the build unpacks the artifact stackforge.lock pins, applies the
series with `git am --3way` (the engine clone uses) to those files at their repository paths, and
hands the result to rattler-build with recipes/derived/: same name and version, the
environment's build string, the input's own `depends` (so conda-forge's libtorch of the same build
is used unchanged) and its native libraries byte for byte.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from stackforge.build.channel import extract_package
from stackforge.build.inputs import DerivedPins, fetch
from stackforge.build.recipes import DERIVED
from stackforge.core.console import Failure, UsageError
from stackforge.core.git import HERMETIC, Git
from stackforge.core.workspace import Workspace
from stackforge.sources.am import apply_series
from stackforge.sources.conflict import conflict_lines
from stackforge.sources.series import series_files
from stackforge.spec.layout import repo_to_wheel
from stackforge.spec.stack import Derive

PREFIX_LIST = "text-prefix.tsv"  # (sed pattern of the input's placeholder, file) per text file
# the scratch repository's base commit: its identity and date never reach the package
_BASE_AUTHOR = ["-c", "user.name=conda-forge artifact", "-c", "user.email=artifact@localhost"]
_DIFF = re.compile(r"^diff --git a/(\S+) b/(\S+)$", re.M)
_SED_SPECIAL = re.compile(r"([.\[\]*^$\\/|])")


@dataclass(frozen=True)
class Prepared:
    recipe: Path  # the generated recipe folder, handed to rattler-build
    payload: Path  # files/ (what goes into $PREFIX) and text-prefix.tsv
    patched: tuple[str, ...]  # package paths the series changed


def template_folder(ws: Workspace) -> Path:
    return ws.recipes / DERIVED


def touched(patches: list[Path]) -> list[tuple[Path, str]]:
    """(patch, repository path) for every file each patch changes, in series order."""
    found = []
    for patch in patches:
        for old, new in _DIFF.findall(patch.read_text(encoding="utf-8", errors="replace")):
            found += [(patch, p) for p in dict.fromkeys((old, new))]
    return found


def sed_pattern(text: str) -> str:
    """`text` as a literal sed BRE (build.sh uses `|` as the delimiter)."""
    return _SED_SPECIAL.sub(r"\\\1", text)


def site_packages(root: Path) -> Path:
    found = sorted(root.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise Failure(f"{root}: expected one lib/python3.*/site-packages, found {len(found)}")
    return found[0]


def _prefix_files(unpacked: Path, label: str) -> list[tuple[str, str]]:
    """(placeholder, path) of the input's text files that embed its build prefix. A binary file with
    a placeholder would need its bytes rewritten, which a derived package promises not to do."""
    paths = json.loads((unpacked / "info" / "paths.json").read_text()).get("paths", [])
    text = []
    for entry in paths:
        placeholder = entry.get("prefix_placeholder")
        if not placeholder:
            continue
        if entry.get("file_mode") == "binary":
            raise Failure(
                f"{label}: {entry['_path']} embeds the build prefix in binary mode; a derived package keeps "
                "the input's binaries byte for byte and cannot relocate it",
                hint="build this package from source: --from-source",
            )
        text.append((placeholder, entry["_path"]))
    return text


def _apply(patches: list[Path], layout: str, site: Path, scratch: Path, label: str) -> list[str]:
    """Apply the series to the input's files at their repository paths; write results back."""
    mapped: dict[str, str] = {}
    for patch, repo_path in touched(patches):
        wheel_path = repo_to_wheel(layout, repo_path)
        if wheel_path is None:
            raise UsageError(
                f"{patch}: changes {repo_path}, which {label} does not ship as a file (native code is compiled "
                "into its libraries)",
                hint="a derived package takes Python-only patches: build it from source (--from-source), or "
                "move this change into a patch the compiled package needs",
            )
        mapped[repo_path] = wheel_path
    git = Git(quiet=True)
    env = HERMETIC
    tree = scratch / "tree"
    tree.mkdir(parents=True)
    git.run(["init", "-q", str(tree)], scratch, env=env, echo=False)
    for repo_path, wheel_path in mapped.items():
        source = site / wheel_path
        if source.is_file():
            (tree / repo_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / repo_path)
    git.run(["add", "-A"], tree, env=env, echo=False)
    git.run(
        [*_BASE_AUTHOR, "commit", "-q", "--allow-empty", "--date=@0", "-m", label], tree, env=env, echo=False
    )
    run = apply_series(tree, patches, git, echo=False)  # clone's engine, so the verdict is clone's
    if run.failed is not None:
        _files, lines = conflict_lines(run.failed, run.report)
        raise Failure(
            f"{run.failed}: does not apply to {label}'s files" + "".join(f"\n  {line}" for line in lines),
            hint="the artifact's Python files differ from the pinned source; rebase the series on them, "
            "or build from source: --from-source",
        )
    changed = []
    for repo_path, wheel_path in mapped.items():
        target = site / wheel_path
        if (tree / repo_path).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tree / repo_path, target)
        else:
            target.unlink(missing_ok=True)
        changed.append(target.relative_to(site.parents[2]).as_posix())
    return changed


def prepare(ws: Workspace, derive: Derive, pins: DerivedPins, staging: Path) -> Prepared:
    """Fetch (sha256-checked), unpack and patch the input; write the recipe rattler-build runs."""
    label = pins.input.label()
    archive = fetch(pins.input)
    payload = staging / "payload"
    files = payload / "files"
    extract_package(archive, files)
    info = files / "info"
    prefix = _prefix_files(files, label)
    run_exports = info / "run_exports.json"
    exports = json.loads(run_exports.read_text()) if run_exports.is_file() else {}
    shutil.move(info, staging / "input-info")  # conda metadata: rattler-build writes our own
    # A .pyc is valid while its source keeps the mtime recorded in it; repacking gives every file
    # one fixed mtime, so the input's .pyc would all be stale. Python compiles them on first import.
    for cache in sorted(files.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    patched = _apply(series_files(ws, derive.series), derive.series, site_packages(files), staging, label)
    lines = [f"{sed_pattern(p)}\t{path}\n" for p, path in prefix]
    (payload / PREFIX_LIST).write_text("".join(lines))
    recipe = staging / "recipe"
    shutil.copytree(template_folder(ws), recipe)
    data = yaml.safe_load((recipe / "recipe.yaml").read_text())
    data.setdefault("requirements", {})["run"] = list(pins.input.depends)
    weak = [*exports.get("weak", []), *exports.get("noarch", [])]
    strong = exports.get("strong", [])
    if weak or strong:
        data["requirements"]["run_exports"] = {k: v for k, v in (("weak", weak), ("strong", strong)) if v}
    (recipe / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return Prepared(recipe, payload, tuple(patched))
