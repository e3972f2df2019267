"""`stackforge pins resolve` on real git repositories made here, served by file://, by `git daemon`
and by `git http-backend` behind basic auth on loopback: tags (annotated and lightweight), a pin
file in another repository, a chain of them, a moved tag, missing refs, a password in a URL
(never printed), and a write interrupted at every git command (the file stays whole)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from gitfixtures import Upstream, git
from githttp import git_http

from stackforge.cli import main
from stackforge.spec.manifest import load_manifest

PIN_FILE = ".ci/docker/ci_commit_pins/triton.txt"


@dataclass
class Chain:
    """llvm <- triton (cmake/llvm-hash.txt) <- torch (.ci/.../triton.txt), and app with tags."""

    root: Path
    up: Path
    torch: Upstream
    triton: Upstream
    llvm: Upstream
    app: Upstream
    tag_object: str  # the annotated tag v1 itself (not its commit)
    v1: str  # the commit of the annotated tag v1
    v2: str  # the commit of the lightweight tag v2

    @property
    def manifest(self) -> Path:
        return self.root / "git-repos.txt"

    def write(self, *lines: str, url: str | None = None) -> None:
        base = url or self.up.as_uri()
        text = "# test workspace: pins resolved by stackforge\n" + "\n".join(
            ln.replace("URL", base) for ln in lines
        )
        self.manifest.write_text(text + "\n")

    def standard(self, url: str | None = None) -> None:
        self.write(
            f"torch    URL/torch.git   {self.torch.head}  ref=v9  # pinned by hand",
            "triton   URL/triton.git  -  pin=torch:" + PIN_FILE + " for=triton  # the commit torch pins",
            "llvm     URL/llvm.git    -  pin=triton:cmake/llvm-hash.txt submodules=none",
            f"app      URL/app.git     -  ref=v1 abbrev={self.v1[:9]}  # an annotated tag",
            "lite     URL/app.git     -  ref=v2",
            url=url,
        )

    def run(self, *args: str) -> int:
        return main(["--root", str(self.root), *args])

    def pins(self) -> dict[str, str]:
        return {s.name: s.commit for s in load_manifest(self.manifest).sources}


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    up = tmp_path / "up"
    llvm = Upstream(up / "llvm.git")
    llvm.commit({"README": "llvm\n"})
    llvm.commit({"README": "llvm 2\n"})
    triton = Upstream(up / "triton.git")
    triton.commit({"cmake/llvm-hash.txt": llvm.head + "\n", "README": "triton\n"})
    torch = Upstream(up / "torch.git")
    torch.commit({PIN_FILE: triton.head + "\n", "README": "torch\n"})
    app = Upstream(up / "app.git")
    app.commit({"a": "1\n"})
    git(app.path, "tag", "-a", "v1", "-m", "release 1")
    v1 = app.head
    app.commit({"a": "2\n"})
    git(app.path, "tag", "v2")
    v2 = app.head
    app.commit({"a": "3\n"})
    git(app.path, "branch", "devel")
    root = tmp_path / "ws"
    root.mkdir()
    c = Chain(root, up, torch, triton, llvm, app, git(app.path, "rev-parse", "v1"), v1, v2)
    c.standard()
    return c


def test_resolve_writes_every_sha_and_keeps_the_rest_of_the_file(chain: Chain, capsys) -> None:
    before = chain.manifest.read_text().splitlines()
    assert chain.run("pins", "resolve") == 0
    err = capsys.readouterr().err
    pins = chain.pins()
    assert pins["triton"] == chain.triton.head and pins["llvm"] == chain.llvm.head
    assert pins["app"] == chain.v1 != chain.tag_object  # the annotated tag's commit, peeled
    assert pins["lite"] == chain.v2
    after = chain.manifest.read_text().splitlines()
    assert after[:2] == before[:2]  # the header and the pinned line, byte for byte
    for old, new in zip(before[2:], after[2:], strict=True):
        assert new.replace(new.split()[2], "-", 1).split() == old.split()  # only the commit changed
    assert after[2].endswith("for=triton  # the commit torch pins")
    assert after[4].endswith(f"ref=v1 abbrev={chain.v1[:9]}  # an annotated tag")
    # every git command that reads a remote was echoed before it ran
    assert f"$ git ls-remote {chain.up.as_uri()}/app.git refs/tags/v1" in err
    assert "git fetch --depth=1 --filter=blob:none origin " + chain.torch.head in err
    assert "pins resolve" not in err and "wrote " in err
    # resolved once: a second run reads nothing and changes nothing
    text = chain.manifest.read_bytes()
    assert chain.run("pins", "resolve") == 0
    err = capsys.readouterr().err
    assert "$ git" not in err and err.count("pinned") == 5 and chain.manifest.read_bytes() == text


def test_naming_the_end_of_a_chain_resolves_it_in_order(chain: Chain, capsys) -> None:
    assert chain.run("pins", "resolve", "llvm", "--json") == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["action"]) for r in rows] == [("triton", "resolved"), ("llvm", "resolved")]
    assert rows[1]["how"] == f"triton:cmake/llvm-hash.txt at {chain.triton.head[:12]}"
    pins = chain.pins()
    assert pins["triton"] == chain.triton.head and pins["llvm"] == chain.llvm.head and pins["app"] == ""


def test_a_pin_file_is_read_from_the_checkout_when_there_is_one(chain: Chain, capsys) -> None:
    assert chain.run("clone", "torch") == 0
    capsys.readouterr()
    assert chain.run("pins", "resolve", "triton") == 0
    err = capsys.readouterr().err
    assert chain.pins()["triton"] == chain.triton.head
    assert not (chain.root / ".stackforge" / "pins" / "torch.git").exists()
    assert f"(cd {chain.root / 'sources' / 'torch'}) git show {chain.torch.head}:{PIN_FILE}" in err


def test_a_moved_tag_is_an_error_until_update_takes_it(chain: Chain, capsys) -> None:
    assert chain.run("pins", "resolve", "app", "lite") == 0
    git(chain.app.path, "tag", "-f", "v2", "main")  # the tags move on
    git(chain.app.path, "tag", "-f", "-a", "v1", "-m", "re-tagged", "main")
    text = chain.manifest.read_bytes()
    assert chain.run("pins", "resolve", "torch") == 1  # pinned by hand from ref=v9: no such tag
    capsys.readouterr()
    assert chain.run("pins", "resolve", "lite") == 1
    err = capsys.readouterr().err
    assert f"git-repos.txt:6: lite pins {chain.v2[:12]}, but tag v2 (lightweight)" in err
    assert f"is {chain.app.head[:12]} now" in err and "pins resolve lite --update" in err
    assert chain.manifest.read_bytes() == text  # never rewritten without --update
    assert chain.run("pins", "resolve", "--update") == 2  # --update names its lines
    assert chain.run("pins", "resolve", "lite", "--update", "--dry-run") == 0
    assert chain.manifest.read_bytes() == text
    assert chain.run("pins", "resolve", "lite", "--update") == 0
    assert chain.pins()["lite"] == chain.app.head
    assert "updated" in capsys.readouterr().err
    # app's line knows the release's abbreviated SHA: the moved tag is refused even with --update
    assert chain.run("pins", "resolve", "app", "--update") == 1
    assert f"does not start with abbrev={chain.v1[:9]}" in capsys.readouterr().err.replace("\n", " ")
    assert chain.pins()["app"] == chain.v1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("x  URL/app.git  -  ref=v7", "app.git has no tag v7"),
        ("x  URL/app.git  -  ref=devel", "(it is a branch: branches move"),
        ("x  URL/nowhere.git  -  ref=v1", "reading tag v1 of x failed"),
        ("x  URL/app.git  -  pin=torch:README", "torch:README at "),  # holds 'torch', not a SHA
        ("x  URL/app.git  -  pin=torch:no/such.txt", "torch has no file no/such.txt at its pin"),
        ("x  URL/app.git  -  ref=v1 abbrev=0000000", "does not start with abbrev=0000000"),
    ],
)
def test_what_cannot_be_read_is_a_file_line_error(chain: Chain, capsys, line: str, message: str) -> None:
    chain.write(f"torch    URL/torch.git   {chain.torch.head}", line)
    text = chain.manifest.read_bytes()
    assert chain.run("pins", "resolve") == 1
    err = capsys.readouterr().err
    assert f"{chain.manifest}:3: " in err.replace("\n", "")
    assert message in err.replace("\n", " ") and "what to do:" in err
    assert chain.manifest.read_bytes() == text


def test_dry_run_reads_but_writes_nothing(chain: Chain, capsys) -> None:
    text = chain.manifest.read_bytes()
    assert chain.run("pins", "resolve", "--dry-run") == 0
    err = capsys.readouterr().err
    assert err.count("would-resolve") == 4 and chain.manifest.read_bytes() == text


def test_clone_refuses_an_unresolved_line_and_clone_all_says_which(chain: Chain, capsys) -> None:
    assert chain.run("clone", "app") == 2
    err = capsys.readouterr().err
    assert "git-repos.txt:5: app has no commit yet ('-': to be read from tag v1)" in err
    assert "stackforge pins resolve app" in err
    assert not (chain.root / "sources" / "app").exists()
    assert chain.run("clone-all") == 1  # the pinned one is cloned, the others named
    err = capsys.readouterr().err
    assert (chain.root / "sources" / "torch" / ".git").is_dir()
    assert err.count("unresolved") >= 4 and "not cloned, no commit yet: triton, llvm, app, lite" in err
    assert chain.run("status", "--json") == 0
    import json

    states = {r["name"]: (r["pin"], r["state"]) for r in json.loads(capsys.readouterr().out)}
    assert states["app"] == ("-", "unresolved") and states["torch"][1] == "up-to-date"
    assert chain.run("pins", "resolve") == 0 and chain.run("clone-all") == 0


def test_a_password_in_a_url_is_used_and_never_printed(chain: Chain, capsys) -> None:
    secret = "s3cr3t-Pa55"
    with git_http(chain.up, "fixture", secret) as base:
        url = base.replace("http://", f"http://fixture:{secret}@")
        chain.standard(url=url)
        assert chain.run("pins", "resolve") == 0
        out = capsys.readouterr()
        assert chain.pins()["app"] == chain.v1 and chain.pins()["llvm"] == chain.llvm.head
        chain.write(f"x  {url}/app.git  -  ref=v7")
        assert chain.run("pins", "resolve") == 1
        failed = capsys.readouterr()
    printed = out.out + out.err + failed.out + failed.err
    assert "$ git ls-remote http://127.0.0.1:" in printed and "has no tag v7" in printed
    assert secret not in printed
    for log in (chain.root / ".stackforge" / "logs").iterdir():
        assert secret not in log.read_text(), log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tags_over_git_daemon(chain: Chain, capsys) -> None:
    port = _free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={chain.up}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(chain.up),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"git://127.0.0.1:{port}"
        for _ in range(100):  # until it listens
            if subprocess.run(["git", "ls-remote", f"{url}/app.git"], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        chain.write(f"app  {url}/app.git  -  ref=v1", f"lite {url}/app.git  -  ref=v2")
        assert chain.run("pins", "resolve") == 0
        assert chain.pins() == {"app": chain.v1, "lite": chain.v2}
    finally:
        daemon.terminate()
        daemon.wait()


def test_a_failed_write_leaves_the_old_file_whole(chain: Chain, monkeypatch, capsys) -> None:
    import stackforge.core.files as files

    text = chain.manifest.read_bytes()

    def full_disk(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    assert chain.run("pins", "resolve", "app") == 1
    assert "No space left on device" in capsys.readouterr().err
    assert chain.manifest.read_bytes() == text
    assert sorted(p.name for p in chain.root.iterdir() if p.name.startswith(".git-repos")) == []


def _resolve(root: Path, kill: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STACKFORGE_TEST_KILL_AT"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    if kill:
        env["STACKFORGE_TEST_KILL_AT"] = kill
    return subprocess.run(
        [sys.executable, "-m", "stackforge", "--root", str(root), "pins", "resolve"],
        env=env,
        capture_output=True,
        text=True,
    )


def test_killed_at_every_git_command_the_file_stays_whole_and_a_rerun_finishes(chain: Chain) -> None:
    original = chain.manifest.read_text().splitlines()
    clean = _resolve(chain.root, None)
    assert clean.returncode == 0, clean.stderr
    final = chain.manifest.read_text().splitlines()
    tried = 0
    for n in range(1, 40):
        chain.manifest.write_text("\n".join(original) + "\n")
        for cache in (chain.root / ".stackforge").glob("pins/*"):
            subprocess.run(["rm", "-rf", str(cache)], check=True)
        killed = _resolve(chain.root, f"{n}:after")
        if killed.returncode == 0:
            break  # fewer git commands than n: every kill point was tried
        assert killed.returncode == -9, killed.stderr
        tried += 1
        lines = chain.manifest.read_text().splitlines()
        assert all(ln in (a, b) for ln, a, b in zip(lines, original, final, strict=True))  # each old or new
        load_manifest(chain.manifest)  # and the file parses
        assert not [p for p in chain.root.iterdir() if p.name.endswith(".tmp")]
        again = _resolve(chain.root, None)
        assert again.returncode == 0, again.stderr
        assert chain.manifest.read_text().splitlines() == final
    assert tried >= 8
    print(f"killed at {tried} git commands; each time the file was whole and a rerun finished")
