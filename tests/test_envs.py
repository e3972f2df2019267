"""GPU environments come from recipes/variants/<env>.yaml: data, not code."""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT

from stackforge.core.console import UsageError
from stackforge.core.workspace import Workspace
from stackforge.spec.envs import env_for_capability, list_envs, load_env, parse_arch_list

WS = Workspace(REPO_ROOT)


def test_real_environments():
    assert list_envs(WS) == ["pascal", "volta"]
    pascal, volta = load_env(WS, "pascal"), load_env(WS, "volta")
    assert pascal.archs == (60, 61) and pascal.torch_cuda_arch_list == "6.0;6.1"
    assert volta.archs == (70,) and volta.cuda_version == "12.9"
    assert pascal.smem_per_block == volta.smem_per_block == 49152
    assert (pascal.smem_per_block_optin, volta.smem_per_block_optin) == (49152, 98304)


@pytest.mark.parametrize(
    ("cc", "env"), [(60, "pascal"), (61, "pascal"), (70, "volta"), (75, "volta"), (80, None)]
)
def test_capability_to_environment(cc, env):
    """SASS of a major runs on its newer minors (7.0 code on a 7.5 card), never across majors."""
    found = env_for_capability(WS, cc)
    assert (found.name if found else None) == env


def test_a_new_environment_is_a_new_file(tmp_path):
    (tmp_path / "git-repos.txt").write_text("")
    variants = tmp_path / "recipes" / "variants"
    variants.mkdir(parents=True)
    (variants / "p100only.yaml").write_text(
        'cuda_compiler_version: ["12.9"]\ntorch_cuda_arch_list: ["6.0"]\n'
    )
    ws = Workspace(tmp_path)
    assert load_env(ws, "p100only").archs == (60,)
    assert env_for_capability(ws, 61).name == "p100only"  # sm_60 SASS runs on 6.1


def test_bad_variant_input_is_named():
    with pytest.raises(UsageError, match="bad arch"):
        parse_arch_list("6.x", "v.yaml")
    with pytest.raises(UsageError, match="not one stackforge targets"):
        parse_arch_list("8.0", "v.yaml")
    with pytest.raises(UsageError, match="unknown environment 'ampere'"):
        load_env(WS, "ampere")


def _variant(tmp_path, text: str) -> tuple[Workspace, str]:
    (tmp_path / "git-repos.txt").write_text("")
    (tmp_path / "recipes" / "variants").mkdir(parents=True, exist_ok=True)
    (tmp_path / "recipes" / "variants" / "bad.yaml").write_text(text)
    return Workspace(tmp_path), str(tmp_path / "recipes" / "variants" / "bad.yaml")


GOOD_CUDA = 'cuda_compiler_version:\n  - "12.9"\n'


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        (GOOD_CUDA + 'torch_cuda_arch_list:\n  - ""\n', ":4", "is empty"),
        (GOOD_CUDA + 'torch_cuda_arch_list:\n  - "6.0;6.0"\n', ":4", "listed twice"),
        (GOOD_CUDA + 'torch_cuda_arch_list:\n  - "6.1;7.0"\n', ":4", "mixes Pascal and Volta"),
        (GOOD_CUDA + 'torch_cuda_arch_list:\n  - "8.0"\n', ":4", "not one stackforge targets"),
        (
            'cuda_compiler_version:\n  - "13.0"\ntorch_cuda_arch_list:\n  - "6.1"\n',
            ":2",
            "CUDA 13.0 cannot compile",
        ),
        ('cuda_compiler_version:\n  - 12.10\ntorch_cuda_arch_list:\n  - "6.1"\n', ":2", "not float 12.1"),
        (GOOD_CUDA + "torch_cuda_arch_list: [\n", ":", "not valid YAML"),
        (GOOD_CUDA + 'torch_cuda_arch_list:\n  - ["6.1"]\n', ":4", "one quoted string"),
        (GOOD_CUDA, "", "no 'torch_cuda_arch_list' key"),
        ("- a list\n", "", "a mapping"),
    ],
)
def test_bad_variant_files_are_file_line_errors(tmp_path, text: str, where: str, says: str):
    ws, path = _variant(tmp_path, text)
    with pytest.raises(UsageError) as exc:
        load_env(ws, "bad")
    assert exc.value.exit_code == 2
    assert exc.value.message.startswith(path + where) and says in exc.value.message, exc.value.message


def test_bad_variant_through_the_cli_is_exit_2_without_traceback(tmp_path, capsys):
    from stackforge.cli import main

    ws, path = _variant(tmp_path, GOOD_CUDA + 'torch_cuda_arch_list:\n  - ""\n')
    assert main(["build", "--root", str(ws.root), "-e", "bad", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4" in err and "Traceback" not in err


def test_any_variant_text_gives_an_env_or_a_usage_error(tmp_path):
    """Property: whatever the file holds, load_env returns an environment or raises UsageError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.one_of(
        st.text(max_size=12),
        st.floats(allow_nan=False),
        st.integers(),
        st.booleans(),
        st.none(),
        st.sampled_from(["6.0;6.1", "7.0", "12.9", "13.0", "6.0;6.0", ""]),
    )
    keys = st.sampled_from(["torch_cuda_arch_list", "cuda_compiler_version", "python", "x"])
    docs = st.one_of(
        st.dictionaries(keys, st.one_of(values, st.lists(values, max_size=2)), max_size=3).map(
            lambda d: __import__("yaml").safe_dump(d)
        ),
        st.text(max_size=80),
        st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    )

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(docs)
    def check(text: str) -> None:
        ws, _ = _variant(tmp_path, text)
        try:
            env = load_env(ws, "bad")
        except UsageError:
            return
        assert env.archs and env.cuda_version

    check()
