"""git-repos.txt: the real file parses, and every malformed line is named by file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT

from stackforge.cli import main
from stackforge.core.console import UsageError
from stackforge.spec.manifest import load_manifest

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
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str):
    path = tmp_path / "git-repos.txt"
    path.write_text(f"# header\n\n{line}\n")
    with pytest.raises(UsageError) as exc:
        load_manifest(path)
    assert str(exc.value).startswith(f"{path}:3: ")
    assert message in str(exc.value)


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
