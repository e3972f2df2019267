"""git-repos.txt: the real file parses, and every malformed line is named by file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT

from stackforge.cli import main
from stackforge.core.console import UsageError
from stackforge.spec.manifest import load_manifest, set_commit

SHA = "b17039bccc17b94a2ea107272ad7bc93508708df"


def test_real_manifest_pins_the_whole_stack():
    m = load_manifest(REPO_ROOT / "git-repos.txt")
    names = {s.name for s in m.sources}
    assert {
        "pytorch",
        "triton",
        "vllm",
        "llvm-project",
        "flash-attention",
        "cutlass",
        "flashmla",
        "qutlass",
        "triton-kernels",
    } <= names
    assert m.get("vllm").commit == SHA and m.get("vllm").ref == "v0.14.0"
    assert m.get("pytorch").commit == "d38164a545b4a4e4e0cf73ce67173f70574890b6"
    assert m.get("triton").commit == "bfeb066872bc1e8b2d2bc0a3b295b99dd77206e7"
    # every source vLLM's CMake would download is handed to the build through its variable
    envs = {s.env for s in m.sources if s.consumer == "vllm" and s.name != "vllm"}
    assert envs == {
        "VLLM_FLASH_ATTN_SRC_DIR",
        "VLLM_CUTLASS_SRC_DIR",
        "FLASH_MLA_SRC_DIR",
        "QUTLASS_SRC_DIR",
        "TRITON_KERNELS_SRC_DIR",
    }
    assert m.get("triton-kernels").subdir == "python/triton_kernels/triton_kernels"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("vllm https://x/vllm.git", "got 2 field(s)"),
        ("vllm https://x/vllm.git v0.14.0", "not a full 40-hex commit SHA"),
        ("vllm https://x/vllm.git main", "tags and branches move"),
        (f"vllm https://x/vllm.git {SHA[:12]}", "is a short commit SHA"),
        (f"vllm https://x/vllm.git {SHA.upper()}", "in lower case"),
        (f"vllm https://x/vllm.git {SHA} colour=blue", "unknown key 'colour'"),
        (f"vllm https://x/vllm.git {SHA} ref", "expected key=value"),
        (f"vllm https://x/vllm.git {SHA} ref=a ref=b", "given twice"),
        (f"vllm https://x/vllm.git {SHA} submodules=some", "expected 'recursive' or 'none'"),
        (f"vllm https://x/vllm.git {SHA} env=lower", "not an environment variable name"),
        (f"vllm https://x/vllm.git {SHA} subdir=../up", "relative path inside the checkout"),
        (f"vl/lm https://x/vllm.git {SHA}", "bad name"),
        (f"vllm ref=v1 {SHA}", "second field must be the git URL"),
        ("vllm https://x/vllm.git v0.14.0", "write '- ref=v0.14.0'"),
        ("vllm https://x/vllm.git -", "does not say from where"),
        ("vllm https://x/vllm.git - for=vllm", "does not say from where"),
        ("vllm https://x/vllm.git - ref=v1 pin=a:b.txt", "ref= and pin= both"),
        ("vllm https://x/vllm.git - pin=nocolon", "expected SOURCE:PATH"),
        ("vllm https://x/vllm.git - pin=a:../up.txt", "expected SOURCE:PATH"),
        ("vllm https://x/vllm.git - pin=vllm:a.txt", "goes round in a circle: vllm -> vllm"),
        ("vllm https://x/vllm.git - pin=torch:a.txt", "this file has no source 'torch'"),
        (f"vllm https://x/vllm.git {SHA} cargo=rust/Cargo.lock", "relative path of a Cargo.toml"),
        (f"vllm https://x/vllm.git {SHA} cargo=/rust/Cargo.toml", "relative path of a Cargo.toml"),
        ("vllm https://me:pw@x/vllm.git 4ba787ec9", "in a clone of https://x/vllm.git"),
        (f"vllm https://x/vllm.git {SHA} abbrev=4ba787ec9", "does not start with abbrev=4ba787ec9"),
        ("vllm https://x/vllm.git - ref=v1 abbrev=G4ba", "expected 4 to 40 lower-case hex"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str):
    path = tmp_path / "git-repos.txt"
    path.write_text(f"# header\n\n{line}\n")
    with pytest.raises(UsageError) as exc:
        load_manifest(path)
    assert str(exc.value).startswith(f"{path}:3: ")
    assert message in f"{exc.value} {exc.value.hint}" and "pw@" not in f"{exc.value} {exc.value.hint}"


def test_unresolved_lines_and_their_keys(tmp_path: Path):
    path = tmp_path / "stacks" / "next" / "git-repos.txt"
    path.parent.mkdir(parents=True)
    path.write_text(
        f"torch https://x/t.git {SHA}\n"
        "triton https://x/tr.git - pin=torch:.ci/pin.txt for=triton  # the commit torch pins\n"
        "vllm https://x/v.git - ref=v1.0 for=vllm cargo=rust/Cargo.toml\n"
    )
    m = load_manifest(path)
    triton, vllm = m.get("triton"), m.get("vllm")
    assert not triton.resolved and triton.commit == "" and triton.short == "-"
    assert (triton.pin_source, triton.pin_path, triton.how) == ("torch", ".ci/pin.txt", "torch:.ci/pin.txt")
    assert vllm.how == "tag v1.0" and vllm.cargo == "rust/Cargo.toml" and vllm.where == f"{path}:3"
    assert m.get("torch").resolved


def test_a_cycle_of_pin_files_is_refused(tmp_path: Path):
    path = tmp_path / "git-repos.txt"
    path.write_text("a https://x/a.git - pin=b:x\nb https://x/b.git - pin=c:x\nc https://x/c.git - pin=a:x\n")
    with pytest.raises(UsageError, match=r"git-repos.txt:1: pin= goes round in a circle: a -> b -> c -> a"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a  https://x/a.git  -  ref=v1  # why", f"a  https://x/a.git  {SHA}  ref=v1  # why"),
        (
            "a  https://x/a.git  -                                           ref=v1",
            f"a  https://x/a.git  {SHA}    ref=v1",
        ),
        ("a https://x/a.git -", f"a https://x/a.git {SHA}"),
        (f"  a\thttps://x/a.git\t{'1' * 40}\tref=v1", f"  a\thttps://x/a.git\t{SHA}\tref=v1"),
    ],
)
def test_set_commit_changes_the_commit_field_only(raw: str, expected: str):
    assert set_commit(raw, SHA) == expected


def test_duplicate_name_points_at_both_lines(tmp_path: Path):
    path = tmp_path / "git-repos.txt"
    path.write_text(f"a https://x/a.git {SHA}\n# comment\na https://x/b.git {SHA}  # trailing comment\n")
    with pytest.raises(UsageError, match=r"git-repos.txt:3: duplicate name 'a' \(first on line 1\)"):
        load_manifest(path)


def test_empty_manifest_and_comments(tmp_path: Path):
    path = tmp_path / "git-repos.txt"
    path.write_text("# nothing\n   \n")
    with pytest.raises(UsageError, match="no sources listed"):
        load_manifest(path)
    path.write_text(f"a https://x/a.git {SHA} ref=v1 # why it is pinned\n")
    assert load_manifest(path).get("a").ref == "v1"


def test_cli_exits_2_on_bad_manifest(tmp_path: Path, capsys):
    (tmp_path / "git-repos.txt").write_text("vllm https://x/vllm.git v0.14.0\n")
    assert main(["--root", str(tmp_path), "status"]) == 2
    err = capsys.readouterr().err
    assert "git-repos.txt:1:" in err and "what to do:" in err


def test_cli_without_workspace_is_a_usage_error(in_dir, capsys):
    assert main(["status"]) == 2
    assert "no git-repos.txt" in capsys.readouterr().err
