"""`patches check` predicts `clone`, patch by patch: both run on the same real git fixtures."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gitfixtures import git, make_patch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackforge.core.workspace import Workspace
from stackforge.sources.checkouts import series_files
from stackforge.sources.patches import check_series
from stackforge.sources.state import read_state

LINES = [f"line {n}" for n in range(20)]
MAIN = "int main(void) { return 0; }\n"  # main.c at the pin


@dataclass
class Outcome:
    verdicts: dict[str, str]  # patch -> applied | conflict | not-tried
    commits: list[str]  # what the applied patches became, in order
    text: str  # what was printed (clone's conflict message)


def _changes(edited: frozenset[int] | set[int] = frozenset(), top: int = 0) -> str:
    """The fixture's CHANGES file as an upstream release might change it: lines edited, some added on top."""
    lines = [f"new {i}" for i in range(top)] + ["release 2"]
    lines += [f"{line} edited upstream" if n in edited else line for n, line in enumerate(LINES)]
    return "\n".join(lines) + "\n"


def _release(stack, files: dict[str, str]) -> str:
    """A new upstream commit, made the pin."""
    files = {**files, "VERSION": f"{stack.app._n}\n"}  # always something new to commit
    pin = stack.app.commit(files, "release")
    stack.manifest(pin=pin)
    return pin


def _check(stack, capsys) -> tuple[int, Outcome, dict]:
    capsys.readouterr()
    code = stack.run("patches", "check", "app", "--json")
    report = json.loads(capsys.readouterr().out)["app"]
    verdicts = {
        p["patch"]: ("applied" if p["verdict"] in ("clean", "3way") else p["verdict"])
        for p in report["patches"]
    }
    commits = [p["commit"] for p in report["patches"] if p["commit"]]
    details = "\n".join(p["detail"] for p in report["patches"] if p["verdict"] == "conflict")
    return code, Outcome(verdicts, commits, details), {p["patch"]: p for p in report["patches"]}


def _clone(stack, capsys) -> tuple[int, Outcome]:
    capsys.readouterr()
    code = stack.run("clone", "app", "--mirror", str(stack.mirror))
    text = capsys.readouterr().err
    series = [p.name for p in series_files(Workspace(stack.root), "app")]
    state = read_state(stack.checkout)
    if code == 0:
        pin = state.pin
        commits = git(stack.checkout, "rev-list", "--reverse", f"{pin}..HEAD").split()
        return code, Outcome(dict.fromkeys(series, "applied"), commits, text)
    stop = series.index(state.failed_patch)
    verdicts = {
        p: "applied" if i < stop else "conflict" if i == stop else "not-tried" for i, p in enumerate(series)
    }
    return code, Outcome(verdicts, [], text)


def _agree(stack, capsys) -> dict:
    """Run check, then clone, on the same fixture; assert they agree patch by patch. Returns the
    check's report, by patch."""
    check_code, predicted, report = _check(stack, capsys)
    clone_code, actual = _clone(stack, capsys)
    assert (check_code == 0) == (clone_code == 0)
    assert predicted.verdicts == actual.verdicts
    if clone_code == 0:
        assert predicted.commits == actual.commits  # the very same commits, not just the same verdicts
    for line in predicted.text.splitlines():  # the same files and hunks named
        assert f"  {line}\n" in actual.text
    return report


def test_clean_series_even_with_offsets(stack, capsys):
    _clone(stack, capsys)
    report = _agree(stack, capsys)
    assert [p["verdict"] for p in report.values()] == ["clean", "clean"]
    # two lines inserted above patch 2's hunk: git am applies it at an offset, as it is
    _release(stack, {"CHANGES": _changes(top=2)})
    report = _agree(stack, capsys)
    assert [p["verdict"] for p in report.values()] == ["clean", "clean"]


def test_context_changed_upstream_is_3way_and_clone_applies_it(stack, capsys):
    _clone(stack, capsys)
    _release(stack, {"CHANGES": _changes(edited={8})})  # in patch 2's context, not next to its line
    report = _agree(stack, capsys)
    assert [p["verdict"] for p in report.values()] == ["clean", "3way"]
    assert "3-way merge" in report["0002-app-patch-changes.patch"]["detail"]
    assert (stack.checkout / "CHANGES").read_text() == _changes(edited={8}).replace(
        "line 10\n", "line 10 patched\n"
    )


def test_reduced_context_only_is_a_conflict_as_in_clone(stack, capsys):
    """The old "fuzz" case: the patch applies with one line of context (`git apply -C1`) but was
    made on a tree upstream never had, so git am --3way (clone) refuses it: so does check."""
    _clone(stack, capsys)
    pin_changes = (stack.app.path / "CHANGES").read_text()
    local = pin_changes.replace("line 13\n", "line 13 local\n")
    make_patch(
        stack.app,
        stack.pin,
        {"CHANGES": local.replace("line 15\n", "line 15 patched\n")},
        stack.patch_dir,
        "app: patch more changes",
        3,
        local={"CHANGES": local},
    )
    make_patch(stack.app, stack.pin, {"NEW": "new\n"}, stack.patch_dir, "app: add new", 4)
    fuzzy = stack.patch_dir / "0003-app-patch-more-changes.patch"
    assert git(stack.checkout, "apply", "--check", "-C1", str(fuzzy)) == ""  # applies with reduced context
    report = _agree(stack, capsys)
    assert [p["verdict"] for p in report.values()] == ["clean", "clean", "conflict", "not-tried"]
    assert report[fuzzy.name]["files"] == ["CHANGES"]
    assert "CHANGES: hunk at line 14 does not apply" in report[fuzzy.name]["detail"]
    assert "0003-app-patch-more-changes.patch" in report["0004-app-add-new.patch"]["detail"]
    assert git(stack.checkout, "rev-parse", "HEAD") == stack.pin  # clone left it at the pin


def test_conflict_names_files_and_hunks_in_human_output(stack, capsys):
    _clone(stack, capsys)
    newer = stack.app.commit(
        {"CHANGES": _changes(edited={10}), "main.c": "int main(int argc, char **argv) { return argc; }\n"}
    )
    capsys.readouterr()
    assert stack.run("patches", "check", "app", "--rev", newer) == 1
    text = capsys.readouterr().err
    assert "conflict  0001-app-return-42.patch  (main.c)" in text
    assert "main.c: hunk at line 1 does not apply" in text and "main.c: 3-way merge conflict" in text
    assert "not-tried  0002-app-patch-changes.patch" in text
    assert stack.run("patches", "check", "app", "--rev", newer, "--json") == 1
    report = json.loads(capsys.readouterr().out)["app"]
    assert report["base"] == newer
    assert [(p["verdict"], p["files"], p["commit"]) for p in report["patches"]] == [
        ("conflict", ["main.c"], ""),
        ("not-tried", ["CHANGES"], ""),
    ]
    # the user's checkout was not touched, and no scratch worktree is left
    assert git(stack.checkout, "status", "--porcelain") == ""
    assert git(stack.checkout, "worktree", "list").count("\n") == 0


EDITS = st.fixed_dictionaries(
    {
        "edited": st.sets(st.integers(4, 16), max_size=3),  # around patch 2's hunk (line 10)
        "top": st.integers(0, 3),
        # as at the pin (twice as likely: the other two make patch 1 conflict)
        "main": st.sampled_from([MAIN, MAIN, "int main(void) { return 1; }\n", "int other;\n" + MAIN]),
    }
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(EDITS)
def test_check_and_clone_agree_on_any_upstream_change(stack, capsys, edits):
    if not (stack.checkout / ".git").exists():
        _clone(stack, capsys)
    # both files written every time: the upstream keeps what the last example made
    files = {"CHANGES": _changes(edits["edited"], edits["top"]), "main.c": edits["main"]}
    _release(stack, files)
    _agree(stack, capsys)


def test_patch_git_am_cannot_read_stops_it_before_any_patch(stack, capsys):
    """(The CLI refuses such a file up front; `check_series` itself still says what git am does.)"""
    _clone(stack, capsys)
    first, second = series_files(Workspace(stack.root), "app")
    empty = stack.root / "0000-empty.patch"
    empty.write_text("")
    results = check_series(stack.checkout, stack.pin, [first, empty, second])
    assert [r.verdict for r in results] == ["not-tried", "conflict", "not-tried"]
    assert "No valid patches in input" in results[1].detail


def test_file_deleted_upstream_is_named(stack, capsys):
    _clone(stack, capsys)
    pin = stack.app.commit({"main.c": None}, "main.c moved away")
    stack.manifest(pin=pin)
    report = _agree(stack, capsys)
    assert [p["verdict"] for p in report.values()] == ["conflict", "not-tried"]
    assert report["0001-app-return-42.patch"]["files"] == ["main.c"]
    assert "main.c: 3-way merge conflict: deleted on one side" in report["0001-app-return-42.patch"]["detail"]
    assert not (stack.checkout / "main.c").exists()  # nothing of the failed merge is left in the checkout
