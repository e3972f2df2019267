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
