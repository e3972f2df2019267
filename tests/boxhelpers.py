"""A workspace copy with run_simple.sh, an nvidia-smi stand-in and a stand-in vllm module, shared by
the run_simple, serve and container tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT
from runtimehelpers import fake_smi, make_workspace

from stackforge.core.workspace import Workspace

SECRET = "hf_StackforgeTestToken0123456789abcdef"
SECRET_LEGACY = "hf_LegacyVariableToken9876543210fedcba"
SECRET_ARG = "hf_ArgumentToken5555555555555555555555"

STANDIN_VLLM = '''
"""Stand-in for vllm (tests only): records the calls run_simple's generate makes."""
import json, os

def _record(entry):
    with open(os.environ["STANDIN_RECORD"], "a") as f:
        f.write(json.dumps(entry) + "\\n")

class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

class _Completion:
    def __init__(self, text, n):
        self.text, self.token_ids = text, list(range(n))

class _Request:
    def __init__(self, prompt, text, n):
        self.prompt, self.outputs = prompt, [_Completion(text, n)]

class _Tokenizer:
    chat_template = os.environ.get("STANDIN_CHAT_TEMPLATE") or None

class LLM:
    def __init__(self, **kwargs):
        names = ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "STACKFORGE_ENV", "HF_HUB_OFFLINE")
        _record({
            "llm": kwargs,
            "env": {k: os.environ.get(k) for k in names},
            "token_reaches_vllm": os.environ.get("HF_TOKEN") == os.environ.get("STANDIN_EXPECT_TOKEN"),
        })

    def get_tokenizer(self):
        return _Tokenizer()

    def _answer(self, prompts, params):
        _record({"prompts": prompts, "sampling": params.kwargs})
        n = params.kwargs["max_tokens"]
        return [_Request(p, f"stand-in answer {i}", n) for i, p in enumerate(prompts)]

    def chat(self, conversations, params, use_tqdm=True):
        return self._answer([c[0]["content"] for c in conversations], params)

    def generate(self, prompts, params, use_tqdm=True):
        return self._answer(list(prompts), params)
'''


class Box:
    """A workspace copy with run_simple.sh, a fake GPU, and the environment a user's shell has."""

    def __init__(self, tmp: Path, card: str = "p40", built: tuple[str, ...] = ("pascal", "volta")) -> None:
        self.tmp = tmp
        self.ws: Workspace = make_workspace(tmp / "ws", built=built)
        shutil.copy2(REPO_ROOT / "run_simple.sh", self.ws.root / "run_simple.sh")
        standin = tmp / "standin"
        (standin / "vllm").mkdir(parents=True)
        (standin / "vllm" / "__init__.py").write_text(STANDIN_VLLM)
        self.record = tmp / "record.jsonl"
        bindir = Path(sys.executable).parent
        self.env = {
            "PATH": f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(tmp / "home"),
            "STACKFORGE_NVIDIA_SMI": str(fake_smi(tmp, card) if card != "missing" else tmp / "no-smi"),
            # the runtime env is "python with the stand-in vllm importable" instead of pixi's
            "STACKFORGE_RUNTIME_EXEC": f"env PYTHONPATH={standin}",
            "STANDIN_RECORD": str(self.record),
            "STANDIN_CHAT_TEMPLATE": "{{ messages }}",
            "HF_TOKEN": SECRET,
            "HUGGING_FACE_HUB_TOKEN": SECRET_LEGACY,
            "STANDIN_EXPECT_TOKEN": SECRET,
        }

    def run(self, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.ws.root / "run_simple.sh"), *args],
            cwd=self.tmp,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )

    def stackforge(self, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stackforge", "--root", str(self.ws.root), *args],
            cwd=self.tmp,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )

    def records(self) -> list[dict]:
        return (
            [json.loads(line) for line in self.record.read_text().splitlines()]
            if self.record.exists()
            else []
        )

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.ws.logs.rglob("*")) if p.is_file())
