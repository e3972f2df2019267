"""Commands of the verify stage that read code for the GPUs: audit kernels, audit binaries."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stackforge.cli.options import add_env, add_json, positive_int
from stackforge.core.console import EXIT_FAILED, EXIT_OK, Failure, UsageError, info, out, print_json


def cmd_audit_kernels(args: argparse.Namespace) -> int:
    import shutil

    from stackforge.core.workspace import find_workspace
    from stackforge.spec.envs import load_env
    from stackforge.verify.kernels.audit import BACKENDS, audit, build_numerics, no_gpu, run_numerics
    from stackforge.verify.kernels.cases import HEAD_SIZES
    from stackforge.verify.kernels.report import print_report
    from stackforge.verify.numerics import gpu as numerics

    ws = find_workspace(args.root)
    env = load_env(ws, args.env)
    vllm_src = _vllm_tree(ws, args.vllm_src)
    if args.triton_patches == "none":
        patches: list[Path] = []
    else:
        folder = Path(args.triton_patches) if args.triton_patches else ws.patch_dir("triton")
        patches = sorted(folder.glob("*.patch"))
    head_sizes = _head_sizes(args.head_sizes) if args.head_sizes else HEAD_SIZES
    backends = (
        BACKENDS
        if args.all
        else tuple(b.strip().lower() for b in (args.backends or "").split(",") if b.strip())
    )
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UsageError(
            f"unknown backend {', '.join(unknown)}", hint=f"opt-in backends: {', '.join(BACKENDS)}"
        )
    kernels = [k.strip() for k in args.kernels.split(",")] if args.kernels else None
    models = ("all",) if args.all else tuple(k.strip() for k in (args.model or "").split(",") if k.strip())
    state = ws.state / "kernel-audit"
    save = Path(args.save_ptx).resolve() if args.save_ptx else None
    why = numerics.gpu_present() if args.run else None
    if args.run and save is None and not why:
        save = state / "records"  # this run's records only: the last run's are removed
        shutil.rmtree(save, ignore_errors=True)
    info(
        f"auditing vLLM Triton kernels in {vllm_src} for {env.name} ({', '.join(f'sm_{a}' for a in env.archs)})"
    )
    report = audit(
        ws, env.name, list(env.archs), vllm_src, patches, kernels=kernels, head_sizes=head_sizes,
        state=state, save=save, jobs=args.jobs, show_progress=not args.json, backends=backends,
        timeout=args.timeout, models=models, options=args.options or args.all,
    )  # fmt: skip
    data = report.to_json()
    if not args.json:
        print_report(report)
    code = EXIT_OK if not report.failures else EXIT_FAILED
    try:
        if args.run:
            if why and save is None:  # nothing to build the records for: say so right after the report
                raise no_gpu(why, None)
            assert save is not None
            built = build_numerics(save / "numerics", vllm_src, list(env.archs), report, state)
            data["numerics_build"] = [asdict(b) for b in built]
            if not built or not all(b.ok for b in built):
                code = EXIT_FAILED
            if why:
                raise no_gpu(why, save)
            run_code, data["numerics"] = run_numerics(save, env)
            code = max(code, run_code)
    except Failure as exc:
        data["numerics"] = {"error": exc.message}
        raise
    finally:
        if args.json:
            print_json(data)
    return code


def _vllm_tree(ws, spec: str | None) -> Path:
    """--vllm-src: a tree, `pypi` (the stack's release from PyPI plus patches/vllm, cached) or
    `pypi:X.Y.Z`; default sources/vllm, or a usage error saying how to audit without a clone."""
    if spec and (spec == "pypi" or spec.startswith("pypi:")):
        from stackforge.spec.stack import load_stack
        from stackforge.verify.upstream.repos import patched_sdist_tree

        version = spec.partition(":")[2] or load_stack(ws).version("vllm")
        info(f"vLLM {version} from its PyPI sdist, with {ws.patch_dir('vllm')} applied")
        return patched_sdist_tree(version, sorted(ws.patch_dir("vllm").glob("*.patch")))
    tree = Path(spec).resolve() if spec else ws.checkout("vllm")
    if not (tree / "vllm").is_dir():
        raise UsageError(
            f"{tree}: not a vLLM source tree" if spec else f"{tree} is not cloned",
            hint="`stackforge clone vllm`, or audit the PyPI sdist with the series: --vllm-src pypi",
        )
    return tree


def _head_sizes(text: str) -> tuple[int, ...]:
    """`--head-sizes 64,128`: whole numbers from 16 up (a usage error otherwise, never a traceback)."""
    sizes = []
    for part in text.split(","):
        try:
            size = int(part.strip())
        except ValueError:
            raise UsageError(
                f"--head-sizes: {part.strip()!r} is not a whole number", hint="e.g. --head-sizes 64,128"
            ) from None
        if size < 16:
            raise UsageError(
                f"--head-sizes: {size} is too small",
                hint="vLLM's attention head sizes are 16 or more, e.g. 64,128",
            )
        sizes.append(size)
    return tuple(dict.fromkeys(sizes))


def _register_kernels(groups: dict[str, Any]) -> None:
    p = groups["audit"].add_parser(
        "kernels",
        help="compile vLLM's Triton kernels for the environment's GPUs (no GPU needed)",
        description="Will vLLM's Triton kernels compile for the environment's GPUs? Compiles each kernel a "
        "Pascal/Volta user reaches, at vLLM's launch shapes, with Triton's compiler and ptxas, before a build.",
    )
    add_env(p)
    p.add_argument(
        "--vllm-src",
        help="vLLM source tree (default: sources/vllm of the workspace), or `pypi` / `pypi:X.Y.Z`: the "
        "release's PyPI sdist with patches/vllm applied (downloaded once, cached), when nothing is cloned",
    )
    p.add_argument(
        "--triton-patches", help="folder of Triton patches to overlay (default patches/triton; 'none')"
    )
    p.add_argument("--kernels", help="only these kernels (comma-separated names or case-id prefixes)")
    p.add_argument("--head-sizes", help="comma-separated head sizes (default: the audit's list, 64-256)")
    p.add_argument("--jobs", type=positive_int, default=None, help="worker processes (default: one per CPU)")
    p.add_argument(
        "--backends",
        help="also audit the kernels of these backends vLLM never picks on Pascal/Volta by itself "
        "(comma-separated: rocm_attn)",
    )
    p.add_argument(
        "--model",
        metavar="KEY[,KEY]",
        help="also audit what these models of the audit's model list reach: their attention launches "
        "and layers (Mamba2, gated delta net, MoE); `all` for every model (an unknown key lists them)",
    )
    p.add_argument(
        "--options",
        action="store_true",
        help="also audit the kernels of vLLM options: LoRA, speculative decoding, the V2 model runner",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="audit every kernel: every model's, the options' and the opt-in backends'",
    )
    p.add_argument(
        "--timeout", type=positive_int, default=600, help="seconds one compile may take (default 600)"
    )
    add_json(p, "the report")
    p.add_argument(
        "--save-ptx",
        metavar="DIR",
        help="write PTX + a numerics launch record of every compiled kernel to DIR/sm_<arch>/",
    )
    p.add_argument(
        "--run",
        action="store_true",
        help="also build the numerics suite (into DIR/numerics with --save-ptx) and run every record "
        "with a reference on this machine's GPU against PyTorch (stackforge.verify.numerics.gpu)",
    )
    p.set_defaults(func=cmd_audit_kernels)


def _cmd_binaries(args: argparse.Namespace) -> int:
    import tempfile

    from stackforge.core.workspace import find_workspace
    from stackforge.cuda.caps import sm
    from stackforge.cuda.fatbin import find_cuobjdump
    from stackforge.spec.envs import load_env
    from stackforge.verify.binaries import audit_files, collect, failure_message, render

    ws = find_workspace(args.root)
    env_name = args.env or os.environ.get("STACKFORGE_ENV")
    if not env_name:
        raise UsageError(
            "which environment? no -e ENV and STACKFORGE_ENV is unset", hint="pass -e pascal or -e volta"
        )
    env = load_env(ws, env_name)
    cuobjdump = find_cuobjdump([ws.root / ".pixi" / "envs" / env.name])
    with tempfile.TemporaryDirectory(prefix="stackforge-audit-") as scratch:
        files = collect(ws, env, [Path(p) for p in args.paths], Path(scratch))
        info(f"auditing {len(files)} file(s) with device code using {cuobjdump}")
        reports = audit_files(files, env.archs, cuobjdump)
    if not reports:
        raise Failure(
            "no CUDA device code found in what was audited: nothing to check",
            hint="point PATH at the libraries (or packages) that carry the CUDA kernels",
        )
    ok = all(r.ok for r in reports)
    if args.json:
        print_json(
            {
                "env": env.name,
                "archs": [sm(a) for a in env.archs],
                "cuobjdump": str(cuobjdump),
                "libraries": [r.to_json() for r in reports],
                "ok": ok,
            }
        )
    else:
        out.print(render(env, reports))
    if not ok:
        raise Failure(
            failure_message(env, reports),
            hint=f"rebuild with the environment's archs ({env.torch_cuda_arch_list}) in the package's "
            "arch list (TORCH_CUDA_ARCH_LIST / CMAKE_CUDA_ARCHITECTURES), or add PTX for the oldest one",
        )
    if not args.json:
        out.print(
            f"[green]ok[/green]: {len(reports)} libraries have code for {', '.join(f'sm_{a}' for a in env.archs)}"
        )
    return 0


def _register_binaries(groups) -> None:
    p = groups["audit"].add_parser(
        "binaries",
        help="check that built libraries carry SASS or PTX for every GPU arch of an environment",
        description="Does every library with CUDA code carry code for every GPU arch of the environment? "
        "Lists the SASS and PTX each library embeds (cuobjdump) and fails, naming the library, when an "
        "arch has neither SASS it can run nor PTX the driver can JIT.",
    )
    add_env(p)
    p.add_argument(
        "paths", nargs="*", metavar="PATH", help="packages, libraries or folders (default: output/ packages)"
    )
    add_json(p, "the report")
    p.set_defaults(func=_cmd_binaries)


def register(groups) -> None:
    _register_kernels(groups)
    _register_binaries(groups)
