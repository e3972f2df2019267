"""`stackforge generate`: offline generation with vllm.LLM inside the runtime environment (what ./run_simple.sh runs)."""

from __future__ import annotations

import argparse
import os
import time

from stackforge.core.console import EXIT_OK, file_logger, info
from stackforge.core.workspace import Workspace
from stackforge.run.vllm_args import DEFAULT_PROMPT, llm_kwargs, redact, runtime_environment
from stackforge.spec.envs import load_env


def generate(opts: argparse.Namespace, ws: Workspace) -> int:
    """Offline generation with vllm.LLM; prints each answer and tokens per second."""
    env = load_env(ws, opts.env or os.environ.get("STACKFORGE_ENV") or "")
    os.environ.update(runtime_environment(env))
    kwargs = llm_kwargs(env, opts.model, enforce_eager=opts.enforce_eager)
    prompts = opts.prompt or [DEFAULT_PROMPT]
    log = file_logger("run_simple", ws.logs / "run_simple.log")
    log.info(redact(f"env={env.name} prompts={len(prompts)} max_tokens={opts.max_tokens} llm={kwargs}"))
    info(redact(f"vllm.LLM({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"))

    from vllm import LLM, SamplingParams  # heavy: only once every check has passed

    started = time.perf_counter()
    llm = LLM(**kwargs)
    load_s = time.perf_counter() - started
    params = SamplingParams(max_tokens=opts.max_tokens, temperature=0.0)  # greedy: repeatable output
    started = time.perf_counter()
    if getattr(llm.get_tokenizer(), "chat_template", None):
        outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    else:
        outputs = llm.generate(prompts, params, use_tqdm=False)
    gen_s = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    for i, (prompt, result) in enumerate(zip(prompts, outputs, strict=True), 1):
        print(f"--- prompt {i}: {prompt}")
        print(result.outputs[0].text.strip())
    rate = tokens / gen_s if gen_s > 0 else float("inf")
    summary = (
        f"{len(prompts)} prompt(s), {tokens} tokens in {gen_s:.2f} s: {rate:.1f} tokens/s "
        f"(model load {load_s:.1f} s; env {env.name}; "
        f"{'eager' if opts.enforce_eager else 'CUDA graphs'})"
    )
    print(summary)
    log.info(redact(summary))
    return EXIT_OK
