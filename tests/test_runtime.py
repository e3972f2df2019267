"""The runtime: vLLM defaults per environment, preflight checks, the runtime workspace manifest.

GPUs are faked by nvidia-smi stand-ins (executables printing nvidia-smi's CSV answer, read by
`stackforge doctor` through STACKFORGE_NVIDIA_SMI); the output/ channel holds real (tiny) conda
packages made by rattler-build's packager and indexed by py-rattler, so the checks read what a
build leaves behind."""

from __future__ import annotations

import ast
import asyncio
import json
import tomllib
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SCHEMAS
from runtimehelpers import PINS, WS, fake_smi, make_channel, make_workspace

from stackforge.core.console import Failure, UsageError
from stackforge.run import preflight, vllm_args
from stackforge.spec.envs import list_envs, load_env

RUNTIME_TOML = tomllib.loads((REPO_ROOT / "runtime" / "pixi.toml").read_text())
MAIN_TOML = tomllib.loads((REPO_ROOT / "pixi.toml").read_text())


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "STACKFORGE_ENV",
        "STACKFORGE_NVIDIA_SMI",
        "STACKFORGE_RUNTIME_EXEC",
        "CUDA_VISIBLE_DEVICES",
        "VLLM_ATTENTION_BACKEND",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HOME",
    ):
        monkeypatch.delenv(var, raising=False)


# --- the defaults ---------------------------------------------------------------------------------


def test_defaults_suit_pascal_and_volta():
    table = {d.kwarg: d.value for d in vllm_args.DEFAULTS}
    assert table["dtype"] == "float16"  # no bf16 on these GPUs
    assert table["attention_backend"] == "TRITON_ATTN"
    assert 1024 <= table["max_model_len"] <= 8192
    assert 0.5 <= table["gpu_memory_utilization"] < 1.0
    assert table["compilation_config"] == {"mode": "NONE", "cudagraph_mode": "FULL_DECODE_ONLY"}
    assert all(d.why for d in (*vllm_args.DEFAULTS, *vllm_args.SERVE_DEFAULTS))
    assert set(vllm_args.ENV_OVERRIDES) <= set(list_envs(WS))


@pytest.mark.parametrize("env_name", ["pascal", "volta"])
def test_serve_arguments_per_environment(env_name: str):
    env = load_env(WS, env_name)
    argv = vllm_args.serve_argv(env, [], environ={})
    assert argv[:2] == ["vllm", "serve"]
    pairs = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert pairs == {
        "--dtype": "float16",
        "--attention-backend": "TRITON_ATTN",
        "--max-model-len": "4096",
        "--gpu-memory-utilization": "0.85",
        "--compilation-config": '{"mode":"NONE","cudagraph_mode":"FULL_DECODE_ONLY"}',
        "--host": "127.0.0.1",
        "--port": "8000",
        "--model": vllm_args.DEFAULT_MODEL,
    }
    assert json.loads(pairs["--compilation-config"])["cudagraph_mode"] == "FULL_DECODE_ONLY"
    assert vllm_args.runtime_environment(env) == {
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "STACKFORGE_ENV": env_name,
    }


@pytest.mark.parametrize("env_name", ["pascal", "volta"])
def test_llm_keywords_per_environment(env_name: str):
    env = load_env(WS, env_name)
    graphs = vllm_args.llm_kwargs(env, "m", environ={})
    assert graphs == {
        "model": "m",
        "dtype": "float16",
        "attention_backend": "TRITON_ATTN",
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.85,
        "compilation_config": {"mode": "NONE", "cudagraph_mode": "FULL_DECODE_ONLY"},
    }
    eager = vllm_args.llm_kwargs(env, "m", enforce_eager=True, environ={})
    assert eager["enforce_eager"] is True and "compilation_config" not in eager


@pytest.mark.parametrize(
    ("user", "dropped"),
    [
        (["--dtype", "float32"], "--dtype"),
        (["--dtype=float32"], "--dtype"),
        (["--max_model_len", "8192"], "--max-model-len"),
        (["--gpu-memory-utilization=0.6"], "--gpu-memory-utilization"),
        (["--enforce-eager"], "--compilation-config"),
        (["-O3"], "--compilation-config"),
        (["-cc.mode=VLLM_COMPILE"], "--compilation-config"),
        (["--compilation-config.cudagraph_mode=NONE"], "--compilation-config"),
        (["--attention-backend", "FLEX_ATTENTION"], "--attention-backend"),
        (["--host", "0.0.0.0"], "--host"),
        (["--port=8001"], "--port"),
        (["--model", "my/model"], "--model"),
        (["my/model", "--seed", "1"], "--model"),
    ],
)
def test_user_arguments_replace_defaults(user: list[str], dropped: str):
    argv = vllm_args.serve_argv(load_env(WS, "pascal"), user, environ={})
    assert argv[2 : 2 + len(user)] == user  # the user's arguments, untouched, first
    ours = argv[2 + len(user) :]
    assert dropped not in ours
    every = [d.flag for d in (*vllm_args.DEFAULTS, *vllm_args.SERVE_DEFAULTS)] + ["--model"]
    assert [f for f in every if f in ours] == [f for f in every if f != dropped]  # only that one gave way


def test_deprecated_attention_variable_is_left_alone():
    """vLLM 0.14 raises when VLLM_ATTENTION_BACKEND and --attention-backend are both given."""
    env = load_env(WS, "volta")
    environ = {"VLLM_ATTENTION_BACKEND": "FLEX_ATTENTION"}
    assert "--attention-backend" not in vllm_args.serve_argv(env, [], environ=environ)
    assert "attention_backend" not in vllm_args.llm_kwargs(env, "m", environ=environ)


def test_settings_these_gpus_cannot_run_are_refused():
    for args in (
        ["--kv-cache-dtype", "fp8"],
        ["--kv-cache-dtype=fp8_e4m3"],
        ["--kv-cache-dtype", "fp8_e5m2"],  # TRITON_ATTN stores it as e4m3 too (patches/vllm/0005)
    ):
        with pytest.raises(UsageError) as exc:
            vllm_args.refuse_unsupported(args)
        assert exc.value.hint
    vllm_args.refuse_unsupported(["--kv-cache-dtype", "auto", "--dtype", "float16"])


def test_bfloat16_is_run_in_float16_with_a_warning(capsys: pytest.CaptureFixture[str]):
    """One behaviour for serve and generate: the one vLLM has with patches/vllm/0004 (bf16 below
    compute capability 8.0 runs in float16 with a warning), said before vLLM starts."""
    for args in (["--dtype", "bfloat16"], ["--dtype=bf16"]):
        vllm_args.refuse_unsupported(args)
        assert "vLLM will run the model in float16" in capsys.readouterr().err


def test_hf_token_argument_becomes_a_variable():
    secret = "hf_" + "x" * 30
    assert vllm_args.take_hf_token(["--model", "m", "--hf-token", secret, "--port", "1"]) == (
        ["--model", "m", "--port", "1"],
        secret,
    )
    assert vllm_args.take_hf_token([f"--hf-token={secret}"]) == ([], secret)
    assert vllm_args.take_hf_token(["--hf-token", "--port", "1"]) == (["--hf-token", "--port", "1"], None)


def test_redact_hides_tokens():
    environ = {"HF_TOKEN": "s3cr3t-value", "HUGGING_FACE_HUB_TOKEN": "other-secret"}
    text = "a s3cr3t-value b other-secret c hf_ABCDEFGHIJKLMNOPQRSTUVWX d"
    assert vllm_args.redact(text, environ) == "a *** b *** c hf_*** d"


def test_build_tags_match_the_build_strings():
    assert preflight.build_tag(load_env(WS, "pascal")) == "cuda129_sm60_61_"
    assert preflight.build_tag(load_env(WS, "volta")) == "cuda129_sm70_"


# --- the runtime workspace (runtime/pixi.toml) --------------------------------------------------


def _spec(name: str, table: dict) -> str:
    # bracket form: rattler's strict parser refuses a '.' in a positional build string
    return f'{name}[build="{table["build"]}"]'


def test_runtime_manifest_takes_our_packages_from_output_only():
    ws = RUNTIME_TOML["workspace"]
    assert ws["channels"][0] == "../output" and ws["channel-priority"] == "strict"
    assert (REPO_ROOT / "runtime" / ws["channels"][0]).resolve() == WS.output.resolve()
    assert sorted(RUNTIME_TOML["environments"]) == list_envs(WS)
    for name in preflight.RUNTIME_PACKAGES:
        assert name not in RUNTIME_TOML["dependencies"], f"{name} must come per environment, from output/"
    for env_name in list_envs(WS):
        env = load_env(WS, env_name)
        feature = RUNTIME_TOML["feature"][env_name]
        assert feature["activation"]["env"]["STACKFORGE_ENV"] == env_name
        deps = feature["dependencies"]
        assert set(deps) == set(preflight.RUNTIME_PACKAGES)
        for name in preflight.RUNTIME_PACKAGES:  # versions: what output/ holds, built from stack.yaml
            assert deps[name] == {"build": f"{preflight.build_tag(env)}*", "channel": "../output"}
    assert RUNTIME_TOML["dependencies"]["cuda-version"] == "12.9.*"
    assert {load_env(WS, e).cuda_version for e in list_envs(WS)} == {"12.9"}


def test_runtime_manifest_leaves_out_what_these_gpus_cannot_use():
    names = set(RUNTIME_TOML["dependencies"]) | set(RUNTIME_TOML["pypi-dependencies"])
    for dropped in ("flashinfer-python", "flashinfer", "xformers", "torchvision", "torchaudio", "ray"):
        assert dropped not in names
        assert dropped.split("-")[0] in (REPO_ROOT / "runtime" / "pixi.toml").read_text()  # and says why
    assert RUNTIME_TOML["dependencies"]["numba"] == "==0.61.2"
    assert RUNTIME_TOML["pypi-dependencies"]["stackforge"] == {"path": "..", "editable": True}


def test_main_workspace_has_no_runtime_environment():
    """A build env must solve on a fresh clone: nothing in ../pixi.toml may install from output/."""
    assert not any("output" in str(c) for c in MAIN_TOML["workspace"]["channels"])
    tables = [MAIN_TOML, *MAIN_TOML.get("feature", {}).values()]
    for table in tables:
        for key in ("dependencies", "pypi-dependencies"):
            for name, spec in table.get(key, {}).items():
                assert name not in preflight.RUNTIME_PACKAGES or key == "pypi-dependencies", name
                assert "output" not in json.dumps(spec), f"{name} = {spec}"
        assert not any("output" in str(c) for c in table.get("channels", []))
    assert MAIN_TOML["tasks"]["serve"]["cmd"] == "stackforge serve"
    assert MAIN_TOML["tasks"]["run-simple"]["cmd"] == "./run_simple.sh"


def test_runtime_manifest_validates_against_pixi_schema():
    schema_file = SCHEMAS / "pixi-manifest.schema.json"
    if not schema_file.is_file():
        pytest.skip(f"schemas not found at {SCHEMAS} (they live beside the project, in ../shared/schemas)")
    import jsonschema

    schema = json.loads(schema_file.read_text())
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(RUNTIME_TOML))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("env_name", ["pascal", "volta"])
def test_runtime_specs_select_this_environments_builds(env_name: str, tmp_path: Path):
    """The specs of runtime/pixi.toml, solved by py-rattler against a real channel holding both
    environments' packages, pick exactly this environment's builds."""
    import rattler

    make_channel(tmp_path / "output")
    deps = RUNTIME_TOML["feature"][env_name]["dependencies"]
    specs = [_spec(name, table) for name, table in deps.items()]
    channel = rattler.Channel(str(tmp_path / "output"))
    records = asyncio.run(rattler.solve([channel], specs, platforms=["linux-64", "noarch"]))
    tag = preflight.build_tag(load_env(WS, env_name))
    assert sorted((r.name.normalized, str(r.version), str(r.build)) for r in records) == sorted(
        (name, pin, f"{tag}h0123abcd_0") for name, pin in PINS.items()
    )


# --- preflight pieces ---------------------------------------------------------------------------


def test_not_built_names_the_build_command(tmp_path: Path):
    ws = make_workspace(tmp_path / "ws", built=())
    with pytest.raises(Failure) as exc:
        preflight.check_built(ws, load_env(ws, "pascal"))
    assert "not built yet" in exc.value.message
    assert "pixi run build-cuda -e pascal" in exc.value.hint


def test_built_for_one_environment_only(tmp_path: Path):
    ws = make_workspace(tmp_path / "ws", built=("pascal",))
    found = preflight.check_built(ws, load_env(ws, "pascal"))
    assert [(p.name, p.version, p.build) for p in found] == [
        (name, PINS[name], "cuda129_sm60_61_h0123abcd_0") for name in preflight.RUNTIME_PACKAGES
    ]
    with pytest.raises(Failure) as exc:
        preflight.check_built(ws, load_env(ws, "volta"))
    assert "triton 3.5.1, pytorch 2.9.1, vllm 0.14.0 with build cuda129_sm70_*" in exc.value.message
    assert "pixi run build-cuda -e volta" in exc.value.hint


def test_wrong_version_and_unindexed_channel(tmp_path: Path):
    ws = make_workspace(tmp_path / "ws", built=())
    make_channel(ws.output, ("pascal",), versions={**PINS, "vllm": "0.13.0"})
    with pytest.raises(Failure) as exc:
        preflight.check_built(ws, load_env(ws, "pascal"))
    assert "vllm 0.14.0 (found 0.13.0)" in exc.value.message
    (ws.output / "linux-64" / "repodata.json").unlink()
    with pytest.raises(Failure) as exc:
        preflight.check_built(ws, load_env(ws, "pascal"))
    assert "not indexed" in exc.value.message


def test_model_checks(tmp_path: Path):
    model = tmp_path / "qwen"
    model.mkdir()
    with pytest.raises(Failure, match=r"no config\.json"):
        preflight.check_model(str(model), {})
    (model / "config.json").write_text("{}")
    assert preflight.check_model(str(model), {"HF_HUB_OFFLINE": "1"}).startswith("local ")
    with pytest.raises(Failure, match="does not exist"):
        preflight.check_model(str(tmp_path / "missing"), {})
    # a hub id: fine online, needs the cache offline
    assert "downloaded on first use" in preflight.check_model("Qwen/Qwen2.5-0.5B-Instruct", {})
    cache = tmp_path / "hub"
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    with pytest.raises(Failure) as exc:
        preflight.check_model("Qwen/Qwen2.5-0.5B-Instruct", offline)
    assert "HF_HUB_OFFLINE=1 forbids downloading" in exc.value.message and str(cache) in exc.value.message
    snapshot = cache / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert "from the cache" in preflight.check_model("Qwen/Qwen2.5-0.5B-Instruct", offline)
    assert preflight.hf_cache_dir({"HF_HOME": "/x"}) == Path("/x/hub")
    assert preflight.hf_cache_dir({"HOME": "/h"}) == Path("/h/.cache/huggingface/hub")


def test_coverage_rules():
    pascal, volta = load_env(WS, "pascal"), load_env(WS, "volta")
    assert pascal.covers(60) and pascal.covers(61) and not pascal.covers(70)
    assert volta.covers(70) and volta.covers(75) and not volta.covers(61)
    gpus = [preflight.Gpu(0, "Tesla P40", 61), preflight.Gpu(1, "Tesla V100", 70)]
    assert preflight.visible(gpus, {"CUDA_VISIBLE_DEVICES": "1"}) == gpus[1:]
    assert preflight.visible(gpus, {"CUDA_VISIBLE_DEVICES": "0,-1,1"}) == gpus[:1]
    assert preflight.visible(gpus, {"CUDA_VISIBLE_DEVICES": "GPU-1234"}) == gpus


@pytest.mark.parametrize(("card", "env_name"), [("p40", "pascal"), ("p100", "pascal"), ("v100", "volta")])
def test_environment_chosen_from_the_gpu(card: str, env_name: str, tmp_path: Path, monkeypatch):
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.setenv("STACKFORGE_NVIDIA_SMI", str(fake_smi(tmp_path, card)))
    plan = preflight.preflight(ws, None, None, environ={})
    assert plan.env.name == env_name
    assert [p.build.startswith(preflight.build_tag(plan.env)) for p in plan.packages] == [True] * 3


@pytest.mark.parametrize("card", ["none", "nodriver", "missing"])
def test_no_gpu(card: str, tmp_path: Path, monkeypatch):
    ws = make_workspace(tmp_path / "ws")
    smi = tmp_path / "no-such-nvidia-smi" if card == "missing" else fake_smi(tmp_path, card)
    monkeypatch.setenv("STACKFORGE_NVIDIA_SMI", str(smi))
    with pytest.raises(Failure) as exc:
        preflight.preflight(ws, "pascal", None, environ={})
    assert exc.value.message.startswith("no NVIDIA GPU")
    assert "R580" in exc.value.hint


def test_mixed_box_needs_visible_devices(tmp_path: Path, monkeypatch):
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.setenv("STACKFORGE_NVIDIA_SMI", str(fake_smi(tmp_path, "p40+v100")))
    with pytest.raises(Failure) as exc:
        preflight.preflight(ws, "pascal", None, environ={})
    assert "GPU 1 (Tesla V100-PCIE-32GB" in exc.value.message
    assert "CUDA_VISIBLE_DEVICES=0" in exc.value.hint
    plan = preflight.preflight(ws, None, None, environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert plan.env.name == "volta" and [g.index for g in plan.gpus] == [1]


# --- vLLM 0.14.0 speaks the same language (its sdist, from PyPI) -------------------------------------


def _class_fields(tree: ast.Module, name: str) -> set[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return {
                n.target.id
                for n in node.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            }
    raise AssertionError(f"class {name} not found")


def _function_args(tree: ast.Module, cls: str, fn: str) -> set[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == fn:
                    a = item.args
                    return {x.arg for x in (*a.args, *a.kwonlyargs)} | ({"**"} if a.kwarg else set())
    raise AssertionError(f"{cls}.{fn} not found")


def _enum_members(tree: ast.Module, name: str) -> set[str]:
    return _class_fields(tree, name) | {
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == name
        for stmt in node.body
        if isinstance(stmt, ast.Assign)
        for t in stmt.targets
        if isinstance(t, ast.Name)
    }


@pytest.mark.upstream
def test_vllm_0_14_0_accepts_our_settings():
    """Every keyword, flag value and variable we hand vLLM exists in vLLM 0.14.0's source, and the
    API run_simple's generate uses (and tests/test_run_simple.py stands in for) is vLLM's."""
    upstream = pytest.importorskip(
        "stackforge.verify.upstream.pypi", reason="stackforge.verify.upstream.pypi (PyPI downloads) absent"
    )
    try:
        tree_root = upstream.vllm_sdist("0.14.0")
    except Failure as exc:
        pytest.skip(f"no network to PyPI: {exc.message}")

    def parse(rel: str) -> ast.Module:
        return ast.parse((tree_root / rel).read_text())

    engine = _class_fields(parse("vllm/engine/arg_utils.py"), "EngineArgs")
    for d in vllm_args.DEFAULTS:
        assert d.kwarg in engine, f"EngineArgs has no {d.kwarg} (flag {d.flag})"
    assert "enforce_eager" in engine and "model" in engine and "hf_token" in engine
    frontend = _class_fields(parse("vllm/entrypoints/openai/cli_args.py"), "FrontendArgs")
    for d in vllm_args.SERVE_DEFAULTS:
        assert d.kwarg in frontend
    compilation = parse("vllm/config/compilation.py")
    assert set(vllm_args.CUDA_GRAPHS) <= _class_fields(compilation, "CompilationConfig")
    assert vllm_args.CUDA_GRAPHS["mode"] in _enum_members(compilation, "CompilationMode")
    assert vllm_args.CUDA_GRAPHS["cudagraph_mode"] in _enum_members(compilation, "CUDAGraphMode")
    backends = _enum_members(parse("vllm/v1/attention/backends/registry.py"), "AttentionBackendEnum")
    assert "TRITON_ATTN" in backends
    triton_attn = (tree_root / "vllm/v1/attention/backends/triton_attn.py").read_text()
    assert "_cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.ALWAYS" in triton_attn
    envs_py = (tree_root / "vllm/envs.py").read_text()
    for var in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "VLLM_ATTENTION_BACKEND"):
        assert f'"{var}"' in envs_py
    kv_dtypes = (tree_root / "vllm/config/cache.py").read_text()
    assert '"fp8_e5m2"' in kv_dtypes and '"fp8_e4m3"' in kv_dtypes
    llm = parse("vllm/entrypoints/llm.py")
    assert {"model", "**"} <= _function_args(llm, "LLM", "__init__")
    assert {"messages", "sampling_params", "use_tqdm"} <= _function_args(llm, "LLM", "chat")
    assert {"prompts", "sampling_params", "use_tqdm"} <= _function_args(llm, "LLM", "generate")
    assert "get_tokenizer" in {n.name for n in ast.walk(llm) if isinstance(n, ast.FunctionDef)}
    assert {"max_tokens", "temperature"} <= _class_fields(parse("vllm/sampling_params.py"), "SamplingParams")
    assert {"text", "token_ids"} <= _class_fields(parse("vllm/outputs.py"), "CompletionOutput")
    serve = (tree_root / "vllm/entrypoints/cli/serve.py").read_text()
    assert "args.model = args.model_tag" in serve  # `vllm serve --model X` and `vllm serve X` agree


def test_secret_options_never_print():
    """--api-key and --hf-token values (one that begins with '-' too) are *** wherever we print."""
    key, token = "sk-very-secret-key", "-starts-with-dash-token"
    args = ["--model", "m", "--api-key", key, f"--api-key={key}", "--port", "1"]
    assert vllm_args.redact_args(args) == ["--model", "m", "--api-key", "***", "--api-key=***", "--port", "1"]
    rest, taken = vllm_args.take_hf_token(["--hf-token", token, "--port", "1"])
    assert taken == token and rest == ["--port", "1"]
    assert vllm_args.redact_args(["--hf-token", token]) == ["--hf-token", "***"]
