"""./run_simple.sh and `stackforge serve`, run for real as subprocesses on a workspace copy.

The GPU is an nvidia-smi stand-in (STACKFORGE_NVIDIA_SMI); output/ is a real indexed channel of
tiny packages. What cannot run without a GPU is vLLM itself: the generation step runs against
`STANDIN_VLLM`, a module named vllm that offers the few vLLM 0.14.0 calls generate makes (the
upstream test in test_runtime.py checks those names against vLLM's source) and records what it
was given. A real run needs the `gpu` marker's machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from boxhelpers import SECRET, SECRET_ARG, SECRET_LEGACY, Box
from conftest import REPO_ROOT
from runtimehelpers import PINS, fake_smi

from stackforge.run import preflight, vllm_args
from stackforge.spec.envs import load_env


def test_help(tmp_path: Path):
    proc = Box(tmp_path).run("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--env", "--model", "--prompt", "--max-tokens", "--enforce-eager"):
        assert option in proc.stdout


def test_bad_arguments_are_usage_errors(tmp_path: Path):
    box = Box(tmp_path)
    proc = box.run("--max-tokens", "0")
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr
    proc = box.run("-e", "turing")
    assert proc.returncode == 2 and "unknown environment 'turing'" in proc.stderr
    assert "pascal, volta" in proc.stderr
    assert not box.records()


@pytest.mark.parametrize(("card", "env_name"), [("p40", "pascal"), ("p100", "pascal"), ("v100", "volta")])
def test_generates_on_the_environment_of_the_gpu(card: str, env_name: str, tmp_path: Path):
    box = Box(tmp_path, card)
    proc = box.run("--prompt", "Hello", "--prompt", "Bonjour", "--max-tokens", "7")
    assert proc.returncode == 0, proc.stderr
    first, answered = box.records()
    env = load_env(box.ws, env_name)
    assert first["llm"] == vllm_args.llm_kwargs(env, vllm_args.DEFAULT_MODEL, environ={})
    assert first["env"] == {
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "STACKFORGE_ENV": env_name,
        "HF_HUB_OFFLINE": None,
    }
    assert first["token_reaches_vllm"] is True  # passed through the environment, never printed
    assert answered == {"prompts": ["Hello", "Bonjour"], "sampling": {"max_tokens": 7, "temperature": 0.0}}
    assert "--- prompt 1: Hello\nstand-in answer 0\n--- prompt 2: Bonjour\nstand-in answer 1\n" in proc.stdout
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("2 prompt(s), 14 tokens in ") and " tokens/s (model load " in summary
    assert f"env {env_name}; CUDA graphs)" in summary
    assert f"environment: {env_name} (GPU 0 (" in proc.stderr
    for name, pin in PINS.items():
        assert f"{name} {pin} {preflight.build_tag(env)}h0123abcd_0" in proc.stderr
    assert summary in box.logs()


def test_enforce_eager_and_environment_variable(tmp_path: Path):
    box = Box(tmp_path, "p40")
    proc = box.run("--enforce-eager", extra_env={"STACKFORGE_ENV": "pascal"})
    assert proc.returncode == 0, proc.stderr
    llm = box.records()[0]["llm"]
    assert llm["enforce_eager"] is True and "compilation_config" not in llm
    assert proc.stdout.strip().endswith("env pascal; eager)")


def test_local_model_offline(tmp_path: Path):
    box = Box(tmp_path, "v100")
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    proc = box.run("--model", str(model), extra_env={"HF_HUB_OFFLINE": "1", "STANDIN_CHAT_TEMPLATE": ""})
    assert proc.returncode == 0, proc.stderr
    first, answered = box.records()
    assert first["llm"]["model"] == str(model) and first["env"]["HF_HUB_OFFLINE"] == "1"
    assert answered["prompts"] == [vllm_args.DEFAULT_PROMPT]  # no chat template: plain generate
    assert f"model: local {model}" in proc.stderr


@pytest.mark.parametrize("card", ["none", "nodriver", "missing"])
def test_no_gpu(card: str, tmp_path: Path):
    box = Box(tmp_path, card)
    proc = box.run()
    assert proc.returncode == 1
    assert "error: no NVIDIA GPU" in proc.stderr and "R580" in proc.stderr
    assert not box.records()


def test_gpu_not_covered_by_the_environment(tmp_path: Path):
    box = Box(tmp_path, "v100")
    proc = box.run("-e", "pascal")
    assert proc.returncode == 1
    assert "GPU 0 (Tesla V100-SXM2-16GB, compute capability 7.0): not covered by environment 'pascal'" in (
        proc.stderr
    )
    assert "use -e volta" in proc.stderr
    box = Box(tmp_path / "a100", "a100")
    proc = box.run()
    assert proc.returncode == 1
    assert (
        "no stackforge environment covers GPU 0 (NVIDIA A100-SXM4-40GB, compute capability 8.0)"
        in proc.stderr
    )
    assert not box.records()


def test_packages_not_built(tmp_path: Path):
    box = Box(tmp_path, "p40", built=("volta",))
    proc = box.run()
    assert proc.returncode == 1
    assert "environment 'pascal' is not built yet" in proc.stderr
    assert "pixi run build-cuda -e pascal" in proc.stderr
    assert not box.records()


def test_model_missing_while_offline(tmp_path: Path):
    box = Box(tmp_path, "p40")
    cache = tmp_path / "empty-hub"
    proc = box.run(extra_env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    assert proc.returncode == 1
    assert f"model 'Qwen/Qwen2.5-0.5B-Instruct' is not in the Hugging Face cache ({cache})" in proc.stderr
    assert "huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct" in proc.stderr
    proc = box.run("--model", str(tmp_path / "nowhere"))
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    assert not box.records()


def test_serve_dry_run_and_pixi_style_arguments(tmp_path: Path):
    box = Box(tmp_path, "v100")
    box.env.pop("STACKFORGE_RUNTIME_EXEC")  # the real launcher: pixi, run on the runtime workspace
    env = {"PIXI_EXE": "/opt/pixi/bin/pixi", "STACKFORGE_ENV": "volta"}
    # pixi appends the user's arguments to the task's command, with or without its `--`
    for extra in ([], ["--"]):
        proc = box.stackforge(
            "serve", "--dry-run", *extra, "--model", "my/model", "--port", "8001", extra_env=env
        )
        assert proc.returncode == 0, proc.stderr
        argv = proc.stdout.split()
        assert argv[:6] == [
            "/opt/pixi/bin/pixi",
            "run",
            "--manifest-path",
            str(box.ws.root / "runtime"),
            "--environment",
            "volta",
        ]
        assert argv[6:12] == ["vllm", "serve", "--model", "my/model", "--port", "8001"]
        assert "--dtype float16" in proc.stdout and "--attention-backend TRITON_ATTN" in proc.stdout
        assert "--host 127.0.0.1" in proc.stdout and "--port 8000" not in proc.stdout
    proc = box.stackforge("serve", "--dry-run", "--dtype", "bfloat16", extra_env=env)
    assert proc.returncode == 0 and "run the model in float16" in proc.stderr
    assert "--dtype bfloat16" in proc.stdout and "--dtype float16" not in proc.stdout  # vLLM's 0004 decides


def test_serve_runs_vllm_in_the_runtime_environment(tmp_path: Path):
    """No --dry-run: serve execs the launcher; a recording launcher stands in for pixi + vllm."""
    box = Box(tmp_path, "p40")
    seen = tmp_path / "launched.json"
    recorder = tmp_path / "launcher.py"
    recorder.write_text(
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'env': os.environ.get('STACKFORGE_ENV'), "
        f"'usage_stats': os.environ.get('VLLM_NO_USAGE_STATS'), "
        f"'token_ok': os.environ.get('HF_TOKEN') == {SECRET_ARG!r}}}, open({str(seen)!r}, 'w'))\n"
    )
    proc = box.stackforge(
        "serve",
        "--model",
        "m",
        "--hf-token",
        SECRET_ARG,
        extra_env={"STACKFORGE_RUNTIME_EXEC": f"{sys.executable} {recorder}"},
    )
    assert proc.returncode == 0, proc.stderr
    launched = json.loads(seen.read_text())
    assert launched["argv"] == vllm_args.serve_argv(load_env(box.ws, "pascal"), ["--model", "m"], environ={})
    assert launched["env"] == "pascal" and launched["usage_stats"] == "1"
    assert launched["token_ok"] is True  # the --hf-token value reached vLLM as HF_TOKEN
    assert "OpenAI-compatible API on http://127.0.0.1:8000/v1" in proc.stderr
    assert SECRET_ARG not in proc.stdout + proc.stderr


def test_run_args(tmp_path: Path):
    box = Box(tmp_path, "p40")
    proc = box.stackforge("run-args", "-e", "volta", "--json", "--max-model-len", "2048", "--enforce-eager")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["env"] == "volta" and data["environment"]["STACKFORGE_ENV"] == "volta"
    assert data["serve_argv"][:6] == [
        "vllm",
        "serve",
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--dtype",
    ]
    assert "--compilation-config" not in data["serve_argv"]
    assert data["llm_kwargs"]["enforce_eager"] is True
    proc = box.stackforge("run-args", extra_env={"STACKFORGE_ENV": "pascal"})
    assert proc.returncode == 0
    assert "vllm serve --dtype float16 --attention-backend TRITON_ATTN" in proc.stdout
    assert "VLLM_NO_USAGE_STATS=1" in proc.stdout
    assert box.stackforge("run-args").returncode == 2  # which environment?


def test_token_never_leaks(tmp_path: Path):
    """Every path of run_simple.sh and serve, with tokens in the environment and on the command
    line: no token in any output or log file."""
    box = Box(tmp_path, "p40")
    outputs = []
    for args, extra in [
        (["--help"], {}),
        ([], {}),  # success
        (["--enforce-eager", "--prompt", "x"], {}),
        (["-e", "volta"], {}),  # not covered
        ([], {"STACKFORGE_NVIDIA_SMI": str(fake_smi(tmp_path, "none"))}),  # no GPU
        ([], {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "none")}),  # offline, no model
    ]:
        proc = box.run(*args, extra_env=extra)
        outputs += [proc.stdout, proc.stderr]
    for args in (
        ["serve", "--dry-run", "--hf-token", SECRET_ARG],
        ["serve", "--dry-run", f"--hf-token={SECRET_ARG}", "--model", "m"],
        ["run-args", "-e", "pascal", "--hf-token", SECRET_ARG],
        ["run-args", "-e", "pascal", "--json", "--hf-token", SECRET_ARG],
        ["preflight", "--model", SECRET_ARG],  # even pasted where it does not belong
    ):
        proc = box.stackforge(*args, extra_env={"PIXI_EXE": "/opt/pixi/bin/pixi"})
        outputs += [proc.stdout, proc.stderr]
    assert any("tokens/s" in o for o in outputs)  # the success paths did run
    assert box.logs()  # and logged
    text = "\n".join(outputs) + box.logs()
    for secret in (SECRET, SECRET_LEGACY, SECRET_ARG):
        assert secret not in text
        assert secret[3:15] not in text


@pytest.mark.gpu
def test_real_generation_on_this_gpu(tmp_path: Path):
    """The real thing: needs a Pascal/Volta GPU, `pixi run build-cuda` done and pixi on PATH."""
    if shutil.which("nvidia-smi") is None or shutil.which("pixi") is None:
        pytest.skip("needs an NVIDIA GPU with its driver, pixi, and the packages built into output/")
    if not (REPO_ROOT / "output" / "linux-64" / "repodata.json").is_file():
        pytest.skip("output/ holds no built packages: run `pixi run build-cuda -e <env>` first")
    proc = subprocess.run(
        [str(REPO_ROOT / "run_simple.sh"), "--max-tokens", "16"], capture_output=True, text=True, timeout=3600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "tokens/s" in proc.stdout.strip().splitlines()[-1]
