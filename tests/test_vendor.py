"""git-repos.txt cargo=: clone vendors the crates of a real fixture crate with the real cargo
(a git dependency on a fixture repository by file://, and a path dependency), beside the
checkout; a rerun with the same Cargo.lock does nothing; a new lock is vendored afresh; and
`cargo build --offline` with the saved config builds from the vendored folder alone, after the
git dependency's repository is gone. The 0.33 stack's plan hands the folder to vllm's build."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from gitfixtures import Upstream, git, write_manifest

from stackforge.build.plan import source_env
from stackforge.cli import main
from stackforge.core.workspace import Workspace
from stackforge.sources.vendor import vendor_problem
from stackforge.spec.manifest import load_manifest

CARGO = shutil.which("cargo")
needs_cargo = pytest.mark.skipif(
    CARGO is None,
    reason="cargo is not installed: these tests run the real `cargo vendor` and `cargo build` "
    "(Debian/Ubuntu: apt-get install cargo; .ci/run installs it when it runs as root)",
)
MAIN = 'fn main() { println!("{} {}", dep::hello(), util::n()); }\n'


def _crate(name: str, deps: str = "") -> str:
    return f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n{deps}'


class Fixture:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.dep = Upstream(tmp / "up" / "dep.git")
        self.dep.commit({"Cargo.toml": _crate("dep"), "src/lib.rs": _lib("hello from dep")})
        self.app = Upstream(tmp / "up" / "app.git")
        self.root = tmp / "ws"
        self.root.mkdir()

    def release(self) -> str:
        """An app commit whose rust/Cargo.lock pins dep's current head (made by cargo itself)."""
        deps = f'dep = {{ git = "{self.dep.url}" }}\nutil = {{ path = "util" }}\n'
        files = {"rust/Cargo.toml": _crate("app", deps), "rust/src/main.rs": MAIN}
        files |= {"rust/util/Cargo.toml": _crate("util"), "rust/util/src/lib.rs": "pub fn n() -> u32 { 7 }\n"}
        for rel, text in files.items():
            (self.app.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.app.path / rel).write_text(text)
        lock = self.app.path / "rust" / "Cargo.lock"
        lock.unlink(missing_ok=True)
        subprocess.run(
            [CARGO, "generate-lockfile", "--manifest-path", str(lock.with_name("Cargo.toml"))], check=True
        )
        (self.app.path / ".gitignore").write_text("target/\n")
        return self.app.commit({**files, "rust/Cargo.lock": lock.read_text(), ".gitignore": "target/\n"})

    def pin(self, commit: str) -> None:
        write_manifest(self.root, [f"app {self.app.url} {commit} for=app cargo=rust/Cargo.toml"])

    def run(self, *args: str) -> int:
        return main(["--root", str(self.root), *args])

    @property
    def crates(self) -> Path:
        return self.root / "sources" / "app.crates"


def _lib(text: str) -> str:
    return f'pub fn hello() -> &\'static str {{ "{text}" }}\n'


@pytest.fixture
def fx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fixture:
    monkeypatch.setenv("CARGO_HOME", str(tmp_path / "cargo-home"))  # nothing from ~/.cargo's caches
    return Fixture(tmp_path)


@needs_cargo
def test_clone_vendors_the_crates_and_the_build_needs_only_them(fx: Fixture, capsys) -> None:
    fx.pin(fx.release())
    ws = Workspace(fx.root)
    src = load_manifest(ws.manifest).get("app")
    assert vendor_problem(ws, src) == "has no app/rust/Cargo.lock"
    assert fx.run("clone-all") == 0
    err = capsys.readouterr().err
    assert (
        "cargo vendor --locked --manifest-path" in err and "1 crate(s) vendored in sources/app.crates/" in err
    )
    assert (fx.crates / "vendor" / "dep" / "src" / "lib.rs").is_file()
    config = (fx.crates / ".cargo" / "config.toml").read_text()
    assert f'[source."git+{fx.dep.url}"]' in config and 'directory = "vendor"' in config
    lock = fx.root / "sources" / "app" / "rust" / "Cargo.lock"
    assert (fx.crates / "Cargo.lock.sha256").read_text().strip() == hashlib.sha256(
        lock.read_bytes()
    ).hexdigest()
    assert vendor_problem(ws, src) == ""
    assert git(fx.root / "sources" / "app", "status", "--porcelain", "--untracked-files=all") == ""
    # the same Cargo.lock: nothing is run again
    inode = fx.crates.stat().st_ino
    assert fx.run("clone-all") == 0
    assert "cargo vendor" not in capsys.readouterr().err and fx.crates.stat().st_ino == inode

    # the build: the two folders copied in as the recipe does, cargo told where by the plan's
    # source env (CARGO_HOME), no network, and the git dependency's repository gone
    build = fx.tmp / "build"
    shutil.copytree(fx.root / "sources" / "app", build / "app", ignore=shutil.ignore_patterns(".git"))
    shutil.copytree(fx.crates, build / "app.crates")
    shutil.move(fx.dep.path, fx.tmp / "dep-gone")
    pairs = dict(p.split("=", 1) for p in source_env([src]).split())
    assert pairs == {"CARGO_HOME": "app.crates/.cargo"}
    env = {**os.environ, "CARGO_HOME": str(build / pairs["CARGO_HOME"]), "CARGO_NET_OFFLINE": "true"}
    manifest = build / "app" / "rust" / "Cargo.toml"
    done = subprocess.run(
        [CARGO, "build", "--offline", "--locked", "--manifest-path", str(manifest)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    ran = subprocess.run(
        [build / "app" / "rust" / "target" / "debug" / "app"], capture_output=True, text=True
    )
    assert ran.stdout == "hello from dep 7\n"


@needs_cargo
def test_a_new_cargo_lock_is_vendored_afresh_and_a_half_done_one_is_removed(fx: Fixture, capsys) -> None:
    fx.pin(fx.release())
    assert fx.run("clone-all") == 0
    first = (fx.crates / "Cargo.lock.sha256").read_text()
    shutil.rmtree(fx.crates)
    half = fx.root / "sources" / ".app.crates.partial-999"  # as a killed vendor leaves it
    (half / "vendor").mkdir(parents=True)
    assert fx.run("clone-all", "--dry-run") == 0
    assert "would vendor its crates (has no vendored crates (app.crates/))" in capsys.readouterr().err
    assert half.exists()  # a dry run removes nothing
    assert fx.run("clone-all") == 0
    err = capsys.readouterr().err
    assert "removing .app.crates.partial-999 left by an interrupted run" in err and not half.exists()
    assert (fx.crates / "Cargo.lock.sha256").read_text() == first
    fx.dep.commit({"src/lib.rs": _lib("hello from dep 2")})
    fx.pin(fx.release())  # dep moved on: a new Cargo.lock
    assert fx.run("clone-all") == 0
    assert "1 crate(s) vendored" in capsys.readouterr().err
    assert (fx.crates / "Cargo.lock.sha256").read_text() != first
    assert "hello from dep 2" in (fx.crates / "vendor" / "dep" / "src" / "lib.rs").read_text()
    assert sorted(p.name for p in (fx.root / "sources").iterdir()) == ["app", "app.crates"]


def test_without_cargo_clone_names_the_package_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    app = Upstream(tmp_path / "up" / "app.git")
    app.commit(
        {
            "rust/Cargo.toml": _crate("app"),
            "rust/Cargo.lock": "version = 4\n",
            "rust/src/main.rs": "fn main() {}\n",
        }
    )
    root = tmp_path / "ws"
    root.mkdir()
    write_manifest(root, [f"app {app.url} {app.head} cargo=rust/Cargo.toml"])
    bin_dir = tmp_path / "bin"  # git and nothing else
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(bin_dir))
    assert main(["--root", str(root), "clone-all"]) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert (
        "cargo is not installed" in err and "conda-forge's `rust`" in err and "apt-get install cargo" in err
    )
    assert "Traceback" not in err and not (root / "sources" / "app.crates").exists()


def test_the_0_33_stack_hands_its_crates_to_the_vllm_build(tmp_path: Path, capsys) -> None:
    """The real stack: vllm's line vendors rust/Cargo.toml, its recipe copies sources/vllm.crates in,
    and the plan blocks vllm (only) on the pins still to be resolved, naming the command."""
    root = tmp_path / "ws"
    root.mkdir()
    for item in ("git-repos.txt", "stack.yaml"):
        shutil.copy2(REPO_ROOT / item, root / item)
    shutil.copytree(REPO_ROOT / "recipes", root / "recipes")
    shutil.copytree(REPO_ROOT / "stacks" / "vllm-0.33", root / "stacks" / "vllm-0.33")
    vllm = load_manifest(root / "stacks" / "vllm-0.33" / "git-repos.txt").get("vllm")
    assert vllm.cargo == "rust/Cargo.toml" and not vllm.resolved and vllm.ref == "v0.33.0"
    assert "CARGO_HOME=vllm.crates/.cargo" in source_env([vllm])
    recipe = (root / "stacks" / "vllm-0.33" / "recipes" / "vllm" / "recipe.yaml").read_text()
    assert "path: ../../../../sources/vllm.crates" in recipe
    # only this stack's build needs the crates: the 0.14 recipe's script is not touched
    script = root / "stacks" / "vllm-0.33" / "recipes" / "vllm" / "build.sh"
    assert not script.is_symlink() and "CARGO_HOME" in script.read_text()
    assert "CARGO_HOME" not in (root / "recipes" / "vllm" / "build.sh").read_text()
    code = main(["--root", str(root), "--stack", "vllm-0.33", "build", "-e", "pascal", "--dry-run", "--json"])
    assert code == 1
    plan = {i["package"]: i for i in json.loads(capsys.readouterr().out)["plan"]}
    why = plan["vllm"]["reason"]
    assert plan["vllm"]["status"] == "blocked" and "has no commit yet for cutlass" in why
    assert "stackforge --stack vllm-0.33 pins resolve cutlass triton-kernels vllm" in why
    assert "commit" not in plan["pytorch"]["reason"]  # derived: blocked by the lock only
