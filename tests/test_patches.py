"""patches export / check on real git fixtures."""

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


def test_check_against_new_release_reports_offset_and_conflict(stack, capsys):
    _clone(stack)
    changes = (stack.app.path / "CHANGES").read_text()
    # upstream moves on: two lines inserted above patch 2's hunk, and main.c rewritten
    newer = stack.app.commit(
        {
            "CHANGES": "new top\nnew second\n" + changes,
            "main.c": "int main(int argc, char **argv) { return argc; }\n",
        },
        "release 5",
    )
    capsys.readouterr()
    code = stack.run("patches", "check", "app", "--rev", newer, "--json")
    report = json.loads(capsys.readouterr().out)["app"]
    assert code == 1
    assert report["base"] == newer
    verdicts = {p["patch"]: p for p in report["patches"]}
    assert verdicts["0001-app-return-42.patch"]["verdict"] == "conflict"
    assert verdicts["0001-app-return-42.patch"]["files"] == ["main.c"]
    assert verdicts["0002-app-patch-changes.patch"]["verdict"] == "offset"
    # the user's checkout was not touched
    assert git(stack.checkout, "status", "--porcelain") == ""
    assert git(stack.checkout, "worktree", "list").count("\n") == 0


def test_check_series_reports_fuzz_and_human_output(stack, capsys):
    _clone(stack)
    text = (stack.app.path / "CHANGES").read_text().replace("line 8\n", "line 8 edited upstream\n")
    fuzzy_base = stack.app.commit({"CHANGES": text}, "context drift")
    results = check_series(stack.checkout, fuzzy_base, series_files(Workspace(stack.root), "app"))
    assert [r.verdict for r in results] == ["clean", "fuzz"]
    assert stack.run("patches", "check", "app") == 0
    assert "clean" in capsys.readouterr().err


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
