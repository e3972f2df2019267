"""Issue 12 on real git fixtures: nothing a user made is lost, no secret leaks, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gitfixtures import git

from stackforge.core.console import Failure, UsageError, echo_command, info, warn
from stackforge.core.git import Git, redact_url
from stackforge.core.workspace import Workspace
from stackforge.sources.checkouts import series_files, sync
from stackforge.sources.state import read_state
from stackforge.spec.manifest import load_manifest


def _sync(stack, **kw):
    ws = Workspace(stack.root)
    return sync(ws, load_manifest(ws.manifest), mirror=str(stack.mirror), **kw)


def _series(stack) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(stack.patch_dir.glob("*.patch"))}


def test_export_after_a_conflict_refuses_to_shrink_the_series(stack, capsys):
    _sync(stack)
    stack.app.commit({"CHANGES": "rewritten upstream\n"}, "upstream rewrites CHANGES")
    stack.manifest(pin=stack.app.head)  # patch 0002 no longer applies: checkout left at the pin
    with pytest.raises(Failure, match="0002"):
        _sync(stack)
    before = _series(stack)
    co = stack.checkout
    (co / "main.c").write_text("int main(void) { return 42; }\n")  # the user redoes one patch
    git(co, "commit", "-qam", "redo 0001")
    capsys.readouterr()
    assert stack.run("patches", "export", "app") == 1
    assert "its last update stopped" in capsys.readouterr().err
    assert _series(stack) == before  # two patches did not become one


def test_export_refuses_a_patch_edited_on_disk_and_says_which(stack, capsys):
    _sync(stack)
    patch = stack.patch_dir / "0001-app-return-42.patch"
    patch.write_text(patch.read_text().replace("Why: a test needs it.", "Why: edited by hand."))
    before = _series(stack)
    assert stack.run("patches", "export", "app") == 1
    assert "0001-app-return-42.patch: edited on disk" in capsys.readouterr().err
    assert _series(stack) == before


def test_export_force_names_dropped_patches_and_prints_the_backup(stack, capsys):
    _sync(stack)
    git(stack.checkout, "reset", "-q", "--hard", "HEAD~1")  # drop patch 0002 from the history
    capsys.readouterr()
    assert stack.run("patches", "export", "app") == 1  # rewritten history: refused
    assert stack.run("patches", "export", "--force", "app") == 0
    text = capsys.readouterr().err
    assert "0002-app-patch-changes.patch is not in the new series: dropped" in text
    backup = Path(text.split("previous series saved in ")[1].split()[0])
    assert sorted(p.name for p in backup.glob("*.patch")) == [
        "0001-app-return-42.patch",
        "0002-app-patch-changes.patch",
    ]
    assert [p.name for p in series_files(Workspace(stack.root), "app")] == ["0001-app-return-42.patch"]
    assert not list(stack.patch_dir.parent.glob(".app.swap-*"))


def test_untracked_file_survives_a_pin_change(stack, capsys):
    _sync(stack)
    (stack.checkout / "NOTES").write_text("my notes\n")
    (stack.checkout / "scratch.txt").write_text("keep me\n")
    stack.app.commit({"NOTES": "upstream notes\n"}, "upstream adds NOTES")
    stack.manifest(pin=stack.app.head)
    [result] = _sync(stack)
    assert result.action == "updated"
    assert (stack.checkout / "scratch.txt").read_text() == "keep me\n"  # not in the way: untouched
    saved = list((stack.root / ".stackforge" / "backups").glob("untracked-app-*/NOTES"))
    assert [p.read_text() for p in saved] == ["my notes\n"]
    assert str(saved[0].parent) in capsys.readouterr().err


def test_stale_git_lock_is_named_removed_and_the_run_repairs(stack, capsys):
    _sync(stack)
    lock = stack.checkout / ".git" / "index.lock"
    lock.write_text("")
    stack.app.commit({"CHANGES2": "x\n"}, "upstream")
    stack.manifest(pin=stack.app.head)
    [result] = _sync(stack)
    assert result.action == "updated" and not lock.exists()
    assert f"removed stale git lock {lock}" in capsys.readouterr().err.replace("\n", "")


def test_credentials_never_reach_the_terminal_log_or_state(stack, tmp_path, capsys):
    url = f"https://user:s3cret@example.invalid/app.git {stack.pin}"
    (stack.root / "git-repos.txt").write_text(f"app {url}\n")
    _sync(stack)
    state = (stack.checkout / ".git" / "stackforge.json").read_text()
    assert "s3cret" not in state and read_state(stack.checkout).url == "https://example.invalid/app.git"
    log = tmp_path / "git.log"
    with pytest.raises(Failure) as exc:
        Git(log).run(["ls-remote", "https://user:s3cret@127.0.0.1:9/x.git"], tmp_path, env={})
    text = capsys.readouterr().err + log.read_text() + exc.value.render()
    assert "127.0.0.1:9/x.git" in text and "s3cret" not in text
    assert redact_url("ssh://git@host/x and https://a:b@h/y") == "ssh://host/x and https://h/y"


def test_text_is_never_taken_for_markup(tmp_path, capsys):
    odd = tmp_path / "[red]ws"
    odd.mkdir()
    echo_command(["git", "status"], odd)
    info("build printed [/opt/cuda] and [bold]")
    warn("[/x]")
    err = capsys.readouterr().err
    assert "[red]ws" in err and "[/opt/cuda] and [bold]" in err and "[/x]" in err


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("0003-extra.diff", b"diff --git a/x b/x\n", "not part of the series"),
        ("0003-notes.txt", b"hello\n", "not part of the series"),
        ("0003-empty.patch", b"just words\n", "not a git patch"),
        ("0003-nodiff.patch", b"From: a <a@b>\nSubject: [PATCH] x\n\nbody\n", "no diff in it"),
    ],
)
def test_series_reader_refuses_what_it_would_skip(stack, capsys, name, data, message):
    (stack.patch_dir / name).write_bytes(data)
    assert stack.run("clone-all", "--mirror", str(stack.mirror)) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert name in err and message in err
    assert not stack.checkout.exists()


def test_patch_folder_of_an_unknown_source_is_refused(stack, capsys):
    stack.patch_dir.rename(stack.patch_dir.with_name("app-old"))
    assert stack.run("clone-all", "--mirror", str(stack.mirror), "--json") == 2
    captured = capsys.readouterr()
    assert "patches/app-old/" in captured.err
    assert json.loads(captured.out)["exit_code"] == 2  # --json: still JSON on stdout


def test_bad_environment_setting_is_a_usage_error(stack, capsys, monkeypatch):
    monkeypatch.setenv("STACKFORGE_NET_RETRIES", "abc")
    assert stack.run("clone-all", "--mirror", str(stack.mirror)) == 2
    assert "STACKFORGE_NET_RETRIES='abc'" in capsys.readouterr().err


def test_kept_checkout_exits_1_and_json_says_kept(stack, capsys):
    _sync(stack)
    (stack.checkout / "new.c").write_text("int x;\n")
    git(stack.checkout, "add", "new.c")
    git(stack.checkout, "commit", "-qm", "mine")
    capsys.readouterr()
    assert stack.run("clone-all", "--mirror", str(stack.mirror), "--json") == 1
    assert json.loads(capsys.readouterr().out)[0]["action"] == "kept"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xef\xbb\xbfapp https://x/a.git " + b"a" * 40 + b"\n", ":1: starts with a byte-order mark"),
        (b"# caf\xe9\napp https://x/a.git " + b"a" * 40 + b"\n", ":1: byte 6 is not UTF-8"),
    ],
)
def test_manifest_encoding_faults_are_file_line_errors(tmp_path: Path, data: bytes, message: str):
    path = tmp_path / "git-repos.txt"
    path.write_bytes(data)
    with pytest.raises(UsageError, match=message):
        load_manifest(path)
