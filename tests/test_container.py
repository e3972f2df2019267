"""The container image: container/Dockerfile read instruction by instruction (what it installs from,
as whom it runs, what it starts), and container/entrypoint.sh run for real with --dry-run on a
workspace copy. Building the image needs the real output/ and runtime/pixi.lock (docs/container.md)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from boxhelpers import SECRET, Box
from conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "container" / "Dockerfile"
ENTRYPOINT = REPO_ROOT / "container" / "entrypoint.sh"
REPLAY = Path(__file__).parent / "data" / "nvidia-smi" / "replay"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for name, args in instructions(text):
        if name == "FROM":
            result.append([])
        if result:
            result[-1].append((name, args))
    return result


def test_dockerfile_installs_the_lock_and_runs_as_a_user():
    text = DOCKERFILE.read_text()
    install, final = stages(text)
    runs = " ".join(a for n, a in install if n == "RUN")
    assert "pixi install --manifest-path runtime" in runs and "--locked" in runs
    assert "pip" not in re.sub(r"\bpixi\b", "", runs)  # no pip install, no pip uninstall dance
    copied = [a for n, a in install if n == "COPY"]
    assert "runtime/pixi.toml runtime/pixi.lock ./runtime/" in copied and "output ./output" in copied
    users = [a for n, a in final if n == "USER"]
    assert users and users[-1] not in ("root", "0")
    entry = [a for n, a in final if n == "ENTRYPOINT"]
    assert entry == ['["/stackforge/container/entrypoint.sh"]']
    env = " ".join(a for n, a in final if n == "ENV")
    assert (
        "HF_HOME=/home/stackforge/.cache/huggingface" in env
        and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    )
    assert ("EXPOSE", "8000") in final
    # conda environments are not relocatable: the same path in both stages
    assert ("WORKDIR", "/stackforge") in install and (
        "COPY",
        "--from=install /stackforge /stackforge",
    ) in final
    assert ENTRYPOINT.stat().st_mode & 0o111


def test_dockerignore_lets_through_what_is_copied():
    ignore = (REPO_ROOT / ".dockerignore").read_text().split()
    install = stages(DOCKERFILE.read_text())[0]
    for _, args in (i for i in install if i[0] == "COPY"):
        for source in shlex.split(args)[:-1]:
            assert f"!{source.rstrip('/')}" in ignore or f"!{source.rstrip('/')}/" in ignore, source


def entrypoint(box: Box, *args: str, case: str = "p40") -> subprocess.CompletedProcess[str]:
    env = {
        **box.env,
        "STACKFORGE_ROOT": str(box.ws.root),
        "STACKFORGE_ACTIVATE": str(box.tmp / "no-activate.sh"),
        "STACKFORGE_NVIDIA_SMI": str(REPLAY),
        "NVIDIA_SMI_CASE": case,
    }
    env.pop("STACKFORGE_RUNTIME_EXEC")  # the image has none: the environment is already active
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_entrypoint_dry_run_one_gpu(tmp_path: Path):
    box = Box(tmp_path)
    proc = entrypoint(box, "Qwen/Qwen2.5-0.5B-Instruct", "--max-model-len", "2048", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[:8] == [
        "vllm",
        "serve",
        "--host",
        "0.0.0.0",
        "--model",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "--max-model-len",
        "2048",
    ]
    assert "--dtype" in argv and "--attention-backend" in argv and "--port" in argv
    assert SECRET not in proc.stdout + proc.stderr
    proc = entrypoint(box, "--dry-run", "--host", "127.0.0.1")  # no model: the default; --host kept
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout)[2:4] == ["--host", "127.0.0.1"] and "0.0.0.0" not in proc.stdout


def test_entrypoint_dry_run_two_gpus(tmp_path: Path):
    box = Box(tmp_path)
    proc = entrypoint(box, "/models/none", "--dry-run", case="p40x2")
    assert proc.returncode == 1 and "does not exist" in proc.stderr  # a model path is checked first
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    proc = entrypoint(box, str(model), "--dry-run", case="p40x2")
    assert proc.returncode == 0, proc.stderr
    assert "listen 0.0.0.0:8000;" in proc.stdout  # the router faces the host; the servers stay inside
    assert proc.stdout.count(f"vllm serve --model {model} --host 127.0.0.1 --port 800") == 2
