"""`stackforge build` on the miniature stack: order, caching, invalidation, failure, interruption.

Real git checkouts patched by `git am`, real rattler-build builds with the system C compiler,
CMake and Ninja, a real channel indexed by py-rattler. A full build of the three packages takes
about 4 s on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from minihelpers import MiniWs

from stackforge.build import channel
from stackforge.build import machine as buildenv
from stackforge.build.plan import expected_build_string
from stackforge.core.console import Failure, UsageError
from stackforge.spec.envs import load_env


def test_plan_orders_by_requirements_and_says_why(mini: MiniWs, capsys: pytest.CaptureFixture[str]) -> None:
    plan = mini.plan("pascal")
    names = [i.name for i in plan.items]
    # mini-vllm needs mini-torch (host) and mini-triton (run): both come first
    assert names.index("mini-vllm") > names.index("mini-torch")
    assert names.index("mini-vllm") > names.index("mini-triton")
    assert all(i.status == "build" and i.reason == "never built for pascal" for i in plan.items)
    vllm = plan.item("mini-vllm")
    assert vllm.deps == ("mini-torch",)  # run-only mini-triton is not part of its key
    assert vllm.components["deps"] == {"mini-torch": plan.item("mini-torch").key}
    assert set(vllm.components["sources"]) == {"minivllm", "minicutlass"}
    assert vllm.build_string == f"cuda129_sm60_61_h{vllm.key[:8]}_0"
    assert mini.run("build", "-e", "pascal", "--dry-run", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["package"] for p in printed["plan"]] == names
    assert not (mini.channel / "linux-64").exists() or not channel.packages(mini.channel)


def test_env_is_data_volta_gets_its_own_build_strings(mini: MiniWs) -> None:
    volta = mini.plan("volta")
    assert all("_sm70_h" in i.build_string for i in volta.items)
    pascal = mini.plan("pascal")
    assert {i.key for i in volta.items}.isdisjoint({i.key for i in pascal.items})


@pytest.mark.build
def test_full_build_then_noop(built: MiniWs, capsys: pytest.CaptureFixture[str]) -> None:
    names = built.packages()
    assert len(names) == 3 and all("cuda129_sm60_61_h" in n for n in names)
    assert channel.indexed_files(built.channel) == set(names)
    for pkg in ("mini-torch", "mini-triton", "mini-vllm"):
        assert (built.ws.logs / f"{pkg}.log").read_text().count("+ cmake --build build") == 1
    before = {n: (built.channel / "linux-64" / n).stat().st_mtime_ns for n in names}
    assert built.statuses() == dict.fromkeys(("mini-torch", "mini-triton", "mini-vllm"), "cached")
    assert built.run("build", "-e", "pascal") == 0
    assert "0 built, 3 up to date" in capsys.readouterr().err
    assert {n: (built.channel / "linux-64" / n).stat().st_mtime_ns for n in names} == before


@pytest.mark.build
def test_vllm_patch_rebuilds_vllm_only(built: MiniWs) -> None:
    built.edit_patch("minivllm", "MINICUTLASS_TILE(49152)", "MINICUTLASS_TILE(32768)")
    built.sync()
    plan = built.plan()
    assert {i.name: i.status for i in plan.items} == {
        "mini-torch": "cached",
        "mini-triton": "cached",
        "mini-vllm": "build",
    }
    assert "source minivllm changed" in plan.item("mini-vllm").reason
    old = next(n for n in built.packages() if n.startswith("mini-vllm-"))
    outcomes = built.build()
    assert [o.name for o in outcomes if o.status == "built"] == ["mini-vllm"]
    # exactly one current mini-vllm for pascal, indexed; the old one kept aside, outside the index
    current = [n for n in built.packages() if n.startswith("mini-vllm-")]
    assert len(current) == 1 and current[0] != old
    assert channel.indexed_files(built.channel) == set(built.packages())
    assert (built.channel / "superseded" / "linux-64" / old).is_file()
    # the patch comes back: the old build is made current again, nothing is compiled
    built.edit_patch("minivllm", "MINICUTLASS_TILE(32768)", "MINICUTLASS_TILE(49152)")
    built.sync()
    assert built.plan().item("mini-vllm").reason == "in output/superseded/: made current again"
    assert all(o.status == "cached" for o in built.build())
    assert [n for n in built.packages() if n.startswith("mini-vllm-")] == [old]
    assert (built.channel / "superseded" / "linux-64" / current[0]).is_file()


@pytest.mark.build
def test_truncated_repodata_is_rebuilt_not_fatal(built: MiniWs) -> None:
    """A full disk or a kill can leave repodata.json empty or cut: the next build re-indexes."""
    (built.channel / "linux-64" / "repodata.json").write_text('{"packages.conda": {"mini-')
    assert all(o.status == "cached" for o in built.build())
    assert channel.indexed_files(built.channel) == set(built.packages())


@pytest.mark.build
def test_torch_patch_rebuilds_torch_and_vllm(built: MiniWs) -> None:
    built.edit_patch("minitorch", "{ return 60; }", "{ return 61; }")
    built.sync()
    plan = built.plan()
    assert {i.name: i.status for i in plan.items} == {
        "mini-torch": "build",
        "mini-triton": "cached",
        "mini-vllm": "build",
    }
    assert "dependency mini-torch changed" in plan.item("mini-vllm").reason
    outcomes = built.build()
    assert sorted(o.name for o in outcomes if o.status == "built") == ["mini-torch", "mini-vllm"]
    new_vllm = built.channel / "linux-64" / plan.item("mini-vllm").file_name
    index = json.loads((built.channel / "linux-64" / "repodata.json").read_text())["packages.conda"]
    # the new mini-vllm pins exactly the new mini-torch
    torch = plan.item("mini-torch")
    assert f"mini-torch ==0.1.0 {torch.build_string}" in index[new_vllm.name]["depends"]


@pytest.mark.build
def test_triton_patch_rebuilds_triton_only(built: MiniWs) -> None:
    built.edit_patch("minitriton", "{ return arch >= 70; }", "{ return arch >= 75; }")
    built.sync()
    assert built.statuses() == {"mini-torch": "cached", "mini-triton": "build", "mini-vllm": "cached"}
    outcomes = built.build()
    assert [o.name for o in outcomes if o.status == "built"] == ["mini-triton"]


@pytest.mark.build
def test_recipe_and_variant_changes_invalidate(built: MiniWs) -> None:
    script = built.root / "recipes" / "mini-torch" / "build.sh"
    script.write_text(script.read_text() + "# a comment is a change of the recipe\n")
    plan = built.plan()
    assert plan.item("mini-torch").reason == "recipe changed (mini-torch/build.sh)"
    assert plan.item("mini-vllm").status == "build"
    variant = built.root / "recipes" / "variants" / "pascal.yaml"
    variant.write_text(variant.read_text() + "# comments do not count\n")
    assert built.plan().item("mini-triton").status == "cached"


@pytest.mark.build
def test_failing_build_leaves_channel_clean_and_names_log(built: MiniWs) -> None:
    script = built.root / "recipes" / "mini-vllm" / "build.sh"
    script.write_text(script.read_text() + "echo 'linker exploded on purpose' >&2\nexit 3\n")
    before = built.packages()
    repodata = (built.channel / "linux-64" / "repodata.json").read_bytes()
    with pytest.raises(Failure) as info:
        built.build()
    message = info.value.render()
    log = built.ws.logs / "mini-vllm.log"
    assert str(log) in message and "output/ was left unchanged" in message
    assert "linker exploded on purpose" in message and "linker exploded on purpose" in log.read_text()
    assert built.packages() == before
    assert (built.channel / "linux-64" / "repodata.json").read_bytes() == repodata
    assert not list((built.channel / "linux-64").glob(".*"))


@pytest.mark.build
def test_killed_build_leaves_no_package_and_rerun_recovers(built: MiniWs, tmp_path: Path) -> None:
    marker = tmp_path / "build-started"
    script = built.root / "recipes" / "mini-vllm" / "build.sh"
    original = script.read_text()
    script.write_text(f"touch {marker}\nsleep 60\n" + original)
    before = built.packages()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackforge", "--root", str(built.root), "build", "-e", "pascal"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), "the build script never started"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole build: python, rattler-build, the script
    proc.wait()
    assert built.packages() == before
    script.write_text(original + "# changed after the kill\n")
    outcomes = built.build()
    assert [o.name for o in outcomes if o.status == "built"] == ["mini-vllm"]


@pytest.mark.build
def test_building_one_package_builds_what_its_key_needs(mini: MiniWs) -> None:
    assert mini.run("build", "-e", "pascal", "mini-vllm") == 0
    # mini-torch is a host requirement (its key is part of mini-vllm's), mini-triton run-only
    assert [n.split("-0.1.0-")[0] for n in mini.packages()] == ["mini-torch", "mini-vllm"]


def test_unwritable_build_root_is_named(
    mini: MiniWs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the build root should be\n")
    monkeypatch.setenv("STACKFORGE_BUILD_ROOT", str(blocker / "root"))
    with pytest.raises(Failure, match=r"cannot build in .*not-a-folder/root") as info:
        mini.build()
    assert "STACKFORGE_BUILD_ROOT" in info.value.render()


def test_build_string_must_follow_the_scheme(mini: MiniWs) -> None:
    """The engine hands the build string to the recipe; a recipe that writes its own is refused."""
    recipe = mini.root / "recipes" / "mini-torch" / "recipe.yaml"
    recipe.write_text(
        recipe.read_text().replace("${{ stackforge_build_string }}", "mine_${{ stackforge_input_hash }}")
    )
    item = mini.plan().item("mini-torch")
    with pytest.raises(UsageError, match="renders build string"):
        from stackforge.build.builder import _render_for_build

        _render_for_build(mini.ws, mini.plan(), item, mini.root / "staging")
    env = load_env(mini.ws, "volta")
    assert expected_build_string(env, "1a2b3c4d" + "0" * 56, 2) == "cuda129_sm70_h1a2b3c4d_2"


def test_recipe_sources_must_match_git_repos(mini: MiniWs) -> None:
    manifest = mini.root / "git-repos.txt"
    text = manifest.read_text()
    manifest.write_text(text.replace("for=mini-vllm env=MINI_CUTLASS", "for=mini-torch env=MINI_CUTLASS"))
    with pytest.raises(
        UsageError, match=r"git-repos.txt:7: minicutlass is for=mini-torch, but .*mini-torch/recipe.yaml"
    ):
        mini.plan()
    manifest.write_text(text)
    recipe = mini.root / "recipes" / "mini-torch" / "recipe.yaml"
    recipe.write_text(
        recipe.read_text().replace("source:\n", "source:\n  - path: ../../sources/minicutlass\n", 1)
    )
    with pytest.raises(
        UsageError, match=r"copies sources/minicutlass, which .*git-repos\.txt:7 gives to for=mini-vllm"
    ):
        mini.plan()


def test_stale_checkout_blocks_the_plan(mini: MiniWs) -> None:
    mini.edit_patch("minivllm", "MINICUTLASS_TILE(49152)", "MINICUTLASS_TILE(16384)")  # not re-cloned
    plan = mini.plan()
    assert plan.item("mini-vllm").status == "blocked"
    assert (
        "sources/minivllm patches-changed; run `stackforge clone minivllm`" in plan.item("mini-vllm").reason
    )
    assert mini.run("build", "-e", "pascal", "--dry-run") == 1  # a blocked plan says so in its exit code
    with pytest.raises(Failure, match="cannot build"):
        from stackforge.build.builder import run_plan

        run_plan(mini.ws, plan)


def test_max_jobs_from_memory_and_environment() -> None:
    assert buildenv.max_jobs(environ={"MAX_JOBS": "7"}) == (7, "MAX_JOBS from the environment")
    jobs, why = buildenv.max_jobs(gib_per_job=1024.0, environ={})
    assert jobs == 1 and "1024 GiB per job" in why  # never fewer than one job
    jobs, _ = buildenv.max_jobs(gib_per_job=0.001, environ={})
    assert jobs == (os.cpu_count() or 1)  # never more than the CPUs


def test_compiler_cache_settings_pass_through(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "ccache"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\nexec "$@"\n')
    tool.chmod(0o755)
    env = {"PATH": str(tool.parent), "CCACHE_DIR": "/shared/ccache", "CCACHE_MAXSIZE": "50G", "HOME": "/x"}
    name, settings = buildenv.compiler_cache(env)
    assert name == "ccache"
    assert settings["CCACHE_DIR"] == "/shared/ccache" and settings["CMAKE_CUDA_COMPILER_LAUNCHER"] == str(
        tool
    )
    assert "HOME" not in settings
    assert buildenv.compiler_cache({**env, "STACKFORGE_COMPILER_CACHE": "none"}) == (None, {})
    secret = buildenv.secret_value(3, {"CCACHE_DIR": "/a b"})
    assert secret == "export CCACHE_DIR='/a b'; export CMAKE_BUILD_PARALLEL_LEVEL=3; export MAX_JOBS=3"


@pytest.mark.build
def test_a_build_waiting_for_another_says_so(built: MiniWs) -> None:
    """Two builds in one workspace: the second waits for the channel lock, and says whose it is."""
    import subprocess
    import sys
    import threading

    from filelock import FileLock

    lock = FileLock(str(built.ws.state / "output.lock"), thread_local=False)  # the timer thread releases it
    lock.acquire()
    timer = threading.Timer(2.0, lock.release)
    timer.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "stackforge", "--root", str(built.root), "build", "-e", "pascal"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        timer.join()
    assert proc.returncode == 0, proc.stderr
    assert f"waiting for {built.ws.state / 'output.lock'}: another stackforge is building into" in proc.stderr


@pytest.mark.build
def test_build_needs_no_network_after_clone_all(mini: MiniWs) -> None:
    """Hermetic: with the network cut (a new network namespace with no interface up), the whole
    miniature build runs; nothing is downloaded after clone-all."""
    import shutil
    import subprocess
    import sys

    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-rn", "true"], capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("this machine cannot make a network namespace (unshare -rn), so the cut cannot be shown")
    proc = subprocess.run(
        [
            unshare,
            "-rn",
            sys.executable,
            "-m",
            "stackforge",
            "--root",
            str(mini.root),
            "build",
            "-e",
            "pascal",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 built, 0 up to date" in proc.stderr
    offline = subprocess.run(
        [
            unshare,
            "-rn",
            sys.executable,
            "-c",
            "import socket; socket.create_connection(('pypi.org', 443), 3)",
        ],
        capture_output=True,
        text=True,
    )
    assert offline.returncode != 0  # the namespace really had no network
