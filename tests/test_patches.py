"""patches export / check on real git fixtures (check against clone: test_patches_check.py)."""

from __future__ import annotations

import json

from gitfixtures import git, make_patch

from stackforge.core.workspace import Workspace
from stackforge.sources.checkouts import series_files, sync
from stackforge.sources.patches import check_series
from stackforge.spec.manifest import load_manifest


def _clone(stack):
    ws = Workspace(stack.root)
    return sync(ws, load_manifest(ws.manifest), mirror=str(stack.mirror))[0]


def test_export_then_check_round_trip(stack, capsys):
    first = _clone(stack)
    co = stack.checkout
    before = {p.name: p.read_bytes() for p in series_files(Workspace(stack.root), "app")}
    # exporting the canonical checkout rewrites the very same bytes
    assert stack.run("patches", "export", "app") == 0
    assert {p.name: p.read_bytes() for p in series_files(Workspace(stack.root), "app")} == before
    assert git(co, "rev-parse", "HEAD") == first.head
    # a new commit by the user becomes patch 0003, and the checkout becomes pin + 3 patches
    (co / "feature.c").write_text("int feature(void) { return 3; }\n")
    git(co, "add", "feature.c")
    git(co, "commit", "-qm", "app: add feature\n\nWhy: users want it.")
    tree = git(co, "rev-parse", "HEAD^{tree}")
    assert stack.run("patches", "export", "app") == 0
    names = [p.name for p in series_files(Workspace(stack.root), "app")]
    assert names == ["0001-app-return-42.patch", "0002-app-patch-changes.patch", "0003-app-add-feature.patch"]
    assert git(co, "rev-parse", "HEAD^{tree}") == tree
    text = (stack.patch_dir / "0003-app-add-feature.patch").read_text()
    assert (
        text.startswith("From 0000000000000000000000000000000000000000 ")
        and "Subject: [PATCH] app: add feature" in text
    )
    backups = list((stack.root / ".stackforge" / "backups").glob("patches-app-*"))
    assert backups and len(list(backups[-1].glob("*.patch"))) == 2
    # the state is canonical: a re-run is a no-op, and check says every patch is clean
    assert _clone(stack).action == "up-to-date"
    capsys.readouterr()
    assert stack.run("patches", "check", "app", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["verdict"] for p in report["app"]["patches"]] == ["clean", "clean", "clean"]


def test_export_refuses_dirty_checkout(stack, capsys):
    _clone(stack)
    (stack.checkout / "main.c").write_text("dirty\n")
    assert stack.run("patches", "export", "app") == 1
    assert "uncommitted changes" in capsys.readouterr().err
    assert (stack.checkout / "main.c").read_text() == "dirty\n"


def test_export_dry_run_writes_nothing(stack, capsys):
    _clone(stack)
    make_patch(stack.app, stack.pin, {"y": "z\n"}, stack.root / "elsewhere", "unused", 9)
    before = sorted(p.name for p in stack.patch_dir.iterdir())
    assert stack.run("patches", "export", "app", "--dry-run") == 0
    assert sorted(p.name for p in stack.patch_dir.iterdir()) == before
    assert "would write 2 patch(es)" in capsys.readouterr().err


def test_check_series_accepts_relative_patch_paths(stack, monkeypatch):
    _clone(stack)
    monkeypatch.chdir(stack.root)
    relative = [p.relative_to(stack.root) for p in series_files(Workspace(stack.root), "app")]
    assert [r.verdict for r in check_series(stack.checkout, stack.pin, relative)] == ["clean", "clean"]
