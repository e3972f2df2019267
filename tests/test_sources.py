"""clone-all / clone / status on real git fixtures: the pipeline git-repos.txt -> sources/."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from gitfixtures import git, make_patch

from stackforge.core.workspace import Workspace
from stackforge.sources.checkouts import sync
from stackforge.sources.state import read_state
from stackforge.spec.manifest import load_manifest


def _sync(stack, **kw):
    ws = Workspace(stack.root)
    return sync(ws, load_manifest(ws.manifest), mirror=str(stack.mirror), **kw)


def _subjects(checkout: Path, pin: str) -> list[str]:
    return git(checkout, "log", "--format=%s", f"{pin}..HEAD").splitlines()[::-1]


def test_first_clone_pins_submodule_and_applies_series(stack):
    [result] = _sync(stack)
    assert result.action == "cloned"
    co = stack.checkout
    assert _subjects(co, stack.pin) == ["app: return 42", "app: patch changes"]
    assert git(co, "rev-parse", "HEAD~2") == stack.pin
    assert (co / "main.c").read_text() == "int main(void) { return 42; }\n"
    # the submodule is at the commit the superproject records, fetched from the mirror
    recorded = git(stack.app.path, "ls-tree", stack.pin, "third_party/lib").split()[2]
    assert git(co / "third_party" / "lib", "rev-parse", "HEAD") == recorded
    assert (co / "third_party" / "lib" / "lib.c").is_file()
    # blobless partial clone
    assert git(co, "config", "remote.origin.partialclonefilter") == "blob:none"
    state = read_state(co)
    assert state.phase == "done" and state.pin == stack.pin and len(state.series) == 2
    assert not list((stack.root / "sources").glob(".app.partial-*"))


def test_rerun_is_a_noop(stack):
    _sync(stack)
    head = git(stack.checkout, "rev-parse", "HEAD")
    log = stack.root / ".stackforge" / "logs" / "sources-app.log"
    size = log.stat().st_size
    [result] = _sync(stack)
    assert result.action == "up-to-date"
    assert git(stack.checkout, "rev-parse", "HEAD") == head
    ran = [ln for ln in log.read_text()[size:].splitlines() if ln.startswith("$ git")]
    assert ran and all(ln.split()[2] in ("rev-parse", "status") for ln in ran), ran  # read-only git only


def test_pin_change_moves_checkout(stack):
    _sync(stack)
    old_pin = stack.pin
    new_pin = stack.app.commit({"NEWS": "new upstream release\n"}, "release 4")
    stack.manifest(pin=new_pin)
    [result] = _sync(stack)
    assert result.action == "updated" and result.detail == "pin-changed"
    assert git(stack.checkout, "rev-parse", "HEAD~2") == new_pin
    assert (stack.checkout / "NEWS").is_file()
    stack.manifest(pin=old_pin)
    [result] = _sync(stack)
    assert git(stack.checkout, "rev-parse", "HEAD~2") == old_pin
    assert not (stack.checkout / "NEWS").exists()


def test_patch_added_removed_and_edited(stack):
    _sync(stack)
    make_patch(stack.app, stack.pin, {"extra.txt": "third\n"}, stack.patch_dir, "app: add extra", 3)
    [r] = _sync(stack)
    assert r.action == "updated" and r.detail == "patches-changed"
    assert (stack.checkout / "extra.txt").read_text() == "third\n"
    assert len(_subjects(stack.checkout, stack.pin)) == 3

    (stack.patch_dir / "0003-app-add-extra.patch").unlink()
    [r] = _sync(stack)
    assert r.action == "updated" and not (stack.checkout / "extra.txt").exists()
    assert len(_subjects(stack.checkout, stack.pin)) == 2

    first = stack.patch_dir / "0001-app-return-42.patch"
    first.write_text(first.read_text().replace("return 42", "return 43"))
    [r] = _sync(stack)
    assert r.action == "updated"
    assert (stack.checkout / "main.c").read_text() == "int main(void) { return 43; }\n"


def test_conflicting_patch_names_patch_and_file_and_leaves_checkout_clean(stack, capsys):
    _sync(stack)
    bad = make_patch(
        stack.app, stack.pin, {"README": "something else entirely\n"}, stack.patch_dir, "app: readme", 3
    )
    # make it conflict: its context no longer matches what upstream has
    bad.write_text(bad.read_text().replace("-app\n", "-not what upstream has\n"))
    code = stack.run("clone", "app", "--mirror", str(stack.mirror))
    assert code == 1
    message = capsys.readouterr().err
    assert "0003-app-readme.patch" in message and "README" in message
    assert "patches check app" in message
    co = stack.checkout
    assert not (co / ".git" / "rebase-apply").exists()  # not left mid-`git am`
    assert git(co, "rev-parse", "HEAD") == stack.pin
    assert git(co, "status", "--porcelain", "--untracked-files=no") == ""
    assert read_state(co).phase == "failed"
    # fixing the series and re-running recovers
    bad.unlink()
    [r] = _sync(stack)
    assert r.action == "updated" and len(_subjects(co, stack.pin)) == 2


def test_dirty_checkout_is_refused_and_edit_survives(stack, capsys):
    _sync(stack)
    (stack.checkout / "main.c").write_text("my local work\n")
    stack.manifest(pin=stack.app.commit({"NEWS": "x\n"}, "release 4"))
    assert stack.run("clone-all", "--mirror", str(stack.mirror)) == 1
    assert "uncommitted changes" in capsys.readouterr().err
    assert (stack.checkout / "main.c").read_text() == "my local work\n"


def test_noop_with_local_edit_leaves_it_alone(stack):
    _sync(stack)
    (stack.checkout / "main.c").write_text("my local work\n")
    [r] = _sync(stack)
    assert r.action == "up-to-date" and "uncommitted" in r.detail
    assert (stack.checkout / "main.c").read_text() == "my local work\n"


def test_force_saves_edits_and_commits_under_backup_refs(stack):
    _sync(stack)
    co = stack.checkout
    (co / "README").write_text("committed work\n")
    git(co, "commit", "-qam", "my commit")
    mine = git(co, "rev-parse", "HEAD")
    (co / "main.c").write_text("uncommitted work\n")
    stack.manifest(pin=stack.app.commit({"NEWS": "x\n"}, "release 4"))
    with pytest.raises(Exception, match="left alone"):
        _sync(stack)
    [r] = _sync(stack, force=True)
    assert r.action == "updated" and len(r.backup) == 2
    head_ref = next(b for b in r.backup if b.endswith("/head"))
    work_ref = next(b for b in r.backup if b.endswith("/worktree"))
    assert git(co, "rev-parse", head_ref) == mine
    assert git(co, "show", f"{work_ref}:main.c") == "uncommitted work"
    assert (co / "main.c").read_text() == "int main(void) { return 42; }\n"


def test_commits_above_series_are_kept_on_noop(stack):
    _sync(stack)
    co = stack.checkout
    (co / "README").write_text("committed work\n")
    git(co, "commit", "-qam", "my commit")
    mine = git(co, "rev-parse", "HEAD")
    [r] = _sync(stack)
    assert r.action == "kept" and "patches export app" in r.detail
    assert git(co, "rev-parse", "HEAD") == mine


def test_interrupted_clone_and_interrupted_am_are_recovered(stack):
    sources = stack.root / "sources"
    sources.mkdir()
    partial = sources / ".app.partial-99999"  # what a killed clone leaves
    (partial / ".git").mkdir(parents=True)
    [r] = _sync(stack)
    assert r.action == "cloned" and not partial.exists()
    # simulate a kill in the middle of `git am`: a real am stopped at a patch, state says applying
    co = stack.checkout
    git(co, "checkout", "-q", "--detach", stack.pin)
    bad = stack.root / "bad.patch"
    bad.write_text((stack.patch_dir / "0001-app-return-42.patch").read_text().replace("return 0", "return 7"))
    subprocess.run(["git", "am", str(bad)], cwd=co, capture_output=True, check=False)
    assert (co / ".git" / "rebase-apply").exists()
    state = read_state(co)
    state_file = co / ".git" / "stackforge.json"
    data = json.loads(state_file.read_text())
    data["phase"] = "applying"
    state_file.write_text(json.dumps(data))
    [r] = _sync(stack)
    assert r.action == "updated"
    assert not (co / ".git" / "rebase-apply").exists()
    assert read_state(co).phase == "done" and read_state(co).head == state.head


def test_same_patched_head_from_two_clones_at_different_times(stack, tmp_path, monkeypatch):
    [a] = _sync(stack)
    other = tmp_path / "elsewhere" / "ws2"
    other.mkdir(parents=True)
    (other / "git-repos.txt").write_text((stack.root / "git-repos.txt").read_text())
    (other / "patches").symlink_to(stack.root / "patches")
    time.sleep(1.1)
    # a user environment that would otherwise stamp its own identity and time
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2030-01-01T00:00:00+00:00")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Someone Else")
    ws2 = Workspace(other)
    [b] = sync(ws2, load_manifest(ws2.manifest), mirror=str(stack.mirror))
    assert a.head == b.head and len(a.head) == 40


def test_missing_repository_fails_at_once(stack, capsys):
    (stack.root / "git-repos.txt").write_text(f"app file:///nonexistent/app.git {stack.pin}\n")
    assert stack.run("clone-all") == 1
    err = capsys.readouterr().err
    assert "does not appear to be a git repository" in err and "attempt 1/" not in err


def test_network_failure_retries_then_fails_cleanly(stack, capsys, monkeypatch):
    monkeypatch.setenv("STACKFORGE_NET_RETRIES", "2")
    (stack.root / "git-repos.txt").write_text(
        f"app http://127.0.0.1:9/app.git {stack.pin}\n"
    )  # nothing listens on port 9
    assert stack.run("clone-all") == 1
    err = capsys.readouterr().err
    assert "failed after 2 attempt(s)" in err and "attempt 1/2" in err
    assert not (stack.root / "sources" / "app").exists()
    assert not list((stack.root / "sources").glob(".app.partial-*"))


def test_mirror_from_environment_and_missing_mirror_repo(stack, capsys, monkeypatch):
    monkeypatch.setenv("STACKFORGE_MIRROR", str(stack.mirror))
    assert stack.run("clone", "app") == 0
    assert git(stack.checkout, "remote", "get-url", "origin") == (stack.mirror / "app.git").as_uri()
    monkeypatch.setenv("STACKFORGE_MIRROR", str(stack.root / "empty-mirror"))
    stack.manifest(pin=stack.app.commit({"NEWS": "x\n"}, "release 4"))
    assert stack.run("clone", "app") == 1
    assert "has no app.git" in capsys.readouterr().err


def test_commit_missing_upstream_is_reported(stack, capsys):
    stack.manifest(pin="0" * 40)
    assert stack.run("clone-all", "--mirror", str(stack.mirror)) == 1
    err = capsys.readouterr().err
    assert "0000000000000000000000000000000000000000" in err and "git-repos.txt:2" in err


def test_dry_run_changes_nothing(stack, capsys):
    assert stack.run("clone-all", "--dry-run", "--json", "--mirror", str(stack.mirror)) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["action"] == "would-clone"
    assert not (stack.root / "sources" / "app").exists()


def test_status_reports_each_state(stack, capsys):
    assert stack.run("status", "--json") == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["state"] == "not-cloned" and row["head"] is None
    _sync(stack)
    (stack.checkout / "main.c").write_text("edit\n")
    assert stack.run("status", "--json") == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["up_to_date"] and row["dirty"] and row["applied"] == 2 and row["patches"] == 2
    make_patch(stack.app, stack.pin, {"x": "y\n"}, stack.patch_dir, "app: x", 3)
    assert stack.run("status", "--json") == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["state"] == "patches-changed" and not row["up_to_date"]
    assert stack.run("status") == 0
    assert "patches-changed" in capsys.readouterr().out


def test_unknown_source_name_is_a_usage_error(stack, capsys):
    assert stack.run("clone", "nosuch") == 2
    assert "no source named 'nosuch'" in capsys.readouterr().err


def test_noop_cli_prints_timing(stack, capsys):
    assert stack.run("clone-all", "--mirror", str(stack.mirror)) == 0
    capsys.readouterr()
    assert stack.run("clone-all", "--mirror", str(stack.mirror)) == 0
    err = capsys.readouterr().err
    assert "up-to-date" in err and "1 source(s) in" in err
    assert os.path.isdir(stack.checkout)
