"""Shared pytest fixtures: real git upstreams, a workspace, and the CLI run in-process."""

from __future__ import annotations

import os
import shutil
import sys
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gitfixtures import Upstream, make_patch, write_manifest
from minihelpers import MiniWs, make_mini

from stackforge.cli import main
from stackforge.core.console import Failure
from stackforge.verify.upstream import pypi as upstream

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = REPO_ROOT.parent / "shared" / "schemas"


def online(build: Callable[[], T]) -> T:
    """Run a download; without network (and without a cached copy) skip, saying so."""
    try:
        return build()
    except Failure as exc:
        cause = exc.__cause__
        if isinstance(cause, urllib.error.URLError) and not isinstance(cause, urllib.error.HTTPError):
            pytest.skip(f"no network and nothing cached in {upstream.cache_dir()}: {exc.message}")
        raise


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Network retries without sleeping, and no workspace leaking in from the environment."""
    monkeypatch.setenv("STACKFORGE_RETRY_DELAY", "0")
    monkeypatch.delenv("STACKFORGE_ROOT", raising=False)
    monkeypatch.delenv("STACKFORGE_MIRROR", raising=False)


@dataclass
class Stack:
    """Two upstreams (app with a submodule lib) and a workspace pinning app with a 2-patch series."""

    root: Path
    app: Upstream
    lib: Upstream
    mirror: Path
    pin: str

    def manifest(self, pin: str | None = None, extra: str = "") -> None:
        write_manifest(self.root, [f"app {self.app.url} {pin or self.pin} ref=v1 {extra}".rstrip()])

    def run(self, *args: str) -> int:
        return main(["--root", str(self.root), *args])

    @property
    def checkout(self) -> Path:
        return self.root / "sources" / "app"

    @property
    def patch_dir(self) -> Path:
        return self.root / "patches" / "app"


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    mirror = tmp_path / "mirror"
    lib = Upstream(mirror / "lib.git")
    lib.commit({"lib.c": "int lib(void) { return 1; }\n"}, "lib: first")
    app = Upstream(mirror / "app.git")
    app.commit({"main.c": "int main(void) { return 0; }\n", "README": "app\n"}, "app: first")
    app.add_submodule(lib, "third_party/lib", url="https://example.invalid/upstream/lib.git")
    for i in range(3):
        app.commit(
            {"CHANGES": f"release {i}\n" + "\n".join(f"line {n}" for n in range(20)) + "\n"}, f"release {i}"
        )
    root = tmp_path / "ws"
    root.mkdir()
    st = Stack(root=root, app=app, lib=lib, mirror=mirror, pin=app.head)
    st.manifest()
    make_patch(app, st.pin, {"main.c": "int main(void) { return 42; }\n"}, st.patch_dir, "app: return 42", 1)
    text = (app.path / "CHANGES").read_text().replace("line 10\n", "line 10 patched\n")
    make_patch(app, st.pin, {"CHANGES": text}, st.patch_dir, "app: patch changes", 2)
    return st


@pytest.fixture
def in_dir(tmp_path: Path):
    old = Path.cwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


# --- the miniature stack, built once per session (tests/minihelpers.py) ---------------------------


@pytest.fixture(scope="session")
def session_build_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build root per test session, exported for every build of the session."""
    root = tmp_path_factory.mktemp("build-root")
    old = os.environ.get("STACKFORGE_BUILD_ROOT")
    os.environ["STACKFORGE_BUILD_ROOT"] = str(root)
    yield root
    if old is None:
        os.environ.pop("STACKFORGE_BUILD_ROOT", None)
    else:
        os.environ["STACKFORGE_BUILD_ROOT"] = old


@pytest.fixture
def build_root(session_build_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STACKFORGE_BUILD_ROOT", str(session_build_root))
    return session_build_root


@pytest.fixture(scope="session")
def built_template(session_build_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature workspace cloned, patched and built for pascal once per session."""
    mini = make_mini(tmp_path_factory.mktemp("template") / "ws")
    mini.build("pascal")
    return mini.root


@pytest.fixture
def mini(tmp_path: Path, build_root: Path) -> MiniWs:
    """A fresh miniature workspace: sources cloned and patched, nothing built."""
    return make_mini(tmp_path / "ws")


@pytest.fixture
def built(tmp_path: Path, build_root: Path, built_template: Path) -> MiniWs:
    """A copy of the built template: change it freely."""
    root = tmp_path / "ws"
    shutil.copytree(built_template, root, symlinks=True)
    return MiniWs(root)
