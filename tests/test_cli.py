"""The interface every command shares: --root anywhere, JSON on stdout even in failure, one-line
errors for faults of the environment, whole help texts, start-up without the build engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from stackforge.cli import build_parser, main


def _workspace(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "git-repos.txt").write_text(f"up https://example.invalid/up.git {'1' * 40}\n")
    (tmp_path / "recipes" / "variants").mkdir(parents=True)
    for env in ("pascal", "volta"):
        text = (REPO_ROOT / "recipes" / "variants" / f"{env}.yaml").read_text()
        (tmp_path / "recipes" / "variants" / f"{env}.yaml").write_text(text)
    return tmp_path


def test_root_works_before_and_after_the_command(tmp_path: Path, capsys, monkeypatch):
    root = _workspace(tmp_path / "ws")
    monkeypatch.chdir(tmp_path)  # no git-repos.txt here: only --root can find the workspace
    assert main(["--root", str(root), "status", "--json"]) == 0
    before = capsys.readouterr().out
    assert main(["status", "--json", "--root", str(root)]) == 0
    assert capsys.readouterr().out == before
    assert [row["name"] for row in json.loads(before)] == ["up"]


def test_json_on_stdout_even_when_the_command_fails(tmp_path: Path, capsys):
    root = _workspace(tmp_path / "ws")
    assert main(["audit", "binaries", "--root", str(root), "-e", "pascal", "--json"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is False and "no packages built" in answer["error"] and answer["exit_code"] == 1


def test_a_fault_of_the_environment_is_one_line_not_a_traceback(tmp_path: Path):
    """output/ is a file where the channel folder should be: the OS refuses, the CLI says where."""
    root = _workspace(tmp_path / "ws")
    (root / "output").write_text("not a folder\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stackforge", "--root", str(root), "build", "-e", "pascal", "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error:"), proc.stderr
    assert json.loads(proc.stdout)["ok"] is False


def test_markup_in_messages_is_printed_as_text(tmp_path: Path):
    """A path holding rich markup ([red], [/opt/cuda]) prints as itself and does not crash."""
    root = tmp_path / "[red]ws[/opt/cuda]"
    proc = subprocess.run(
        [sys.executable, "-m", "stackforge", "--root", str(root), "status"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and f"{root}: no git-repos.txt here" in proc.stderr, proc.stderr


def test_every_command_has_whole_help():
    parser = build_parser()
    seen = []

    def walk(p, trail):
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    walk(sub, [*trail, name])
                return
        seen.append(trail)
        assert p.description and p.description.rstrip()[-1] in ".)?", (trail, p.description)
        for action in p._actions:
            assert action.help, (trail, action.dest)

    walk(parser, [])
    assert ["status"] in seen and ["patches", "export"] in seen and ["audit", "binaries"] in seen


def test_run_simple_without_stackforge_or_pixi_says_how_to_get_pixi(tmp_path: Path):
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "run_simple.sh")],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIXI_EXE": "no-such-pixi"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "install pixi" in proc.stderr and "https://pixi.sh" in proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["build", "--help"], ["audit", "kernels", "--help"]])
def test_help_loads_no_stage_of_the_pipeline(argv: list[str]):
    """The parser is built from cli/ alone: rattler, the build engine and Triton stay unloaded."""
    code = (
        "import sys; from stackforge.cli import main\n"
        f"try: main({argv!r})\nexcept SystemExit: pass\n"
        "heavy = [m for m in sys.modules if m.startswith(('rattler', 'stackforge.build', 'stackforge.verify', 'triton'))]\n"
        "print(heavy, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr
