"""Solve before building: a requirement that no channel can meet stops `build` in seconds, before
any compile, naming the package, the requirement and the recipe file. The channel is a real local
one (packages made by rattler-build's packager, indexed by py-rattler) standing in for conda-forge."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from minihelpers import MiniWs

from stackforge.build.presolve import presolve


def _channel(folder: Path, packages: dict[str, str]) -> Path:
    import rattler_build
    from rattler.index import index_fs

    files = folder.parent / ".files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "README").write_text("a stand-in for a conda-forge package\n")
    (folder / "noarch").mkdir(parents=True, exist_ok=True)
    for name, version in packages.items():
        rattler_build.assemble_package(
            name=name,
            version=version,
            target_platform="linux-64",
            build_string="h0_0",
            output_dir=str(folder / "linux-64"),
            files_dir=str(files),
        )
    asyncio.run(index_fs(folder, write_zst=False, write_shards=False))
    return folder


def _needs(mini: MiniWs, requirement: str, channel: Path) -> None:
    """mini-torch's host environment asks for `requirement`; the variant's channel is `channel`."""
    recipe = mini.root / "recipes" / "mini-torch" / "recipe.yaml"
    text = recipe.read_text()
    assert "requirements:" not in text
    recipe.write_text(text.replace("\nabout:", f"\nrequirements:\n  host:\n    - {requirement}\n\nabout:", 1))
    variant = mini.root / "recipes" / "variants" / "pascal.yaml"
    variant.write_text(
        variant.read_text().replace('channel_sources:\n  - ""', f'channel_sources:\n  - "{channel}"')
    )


@pytest.mark.build
@pytest.mark.parametrize(
    ("requirement", "missing"),
    [("zlib-standin >=1.3", "version"), ("no-such-package", "package")],
)
def test_unsolvable_requirement_stops_before_any_compile(
    mini: MiniWs, tmp_path: Path, requirement: str, missing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    channel = _channel(tmp_path / "forge", {"zlib-standin": "1.2.13", "other": "1.0"})
    _needs(mini, requirement, channel)
    started = time.perf_counter()
    assert mini.run("build", "-e", "pascal") == 1
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert "mini-torch: host requirements do not solve" in err, err
    assert requirement.split()[0] in err and "recipes/mini-torch/recipe.yaml" in err.replace("\n", "")
    assert (
        not list((mini.root / "output").glob("*/*.conda")) and not (mini.ws.logs / "mini-torch.log").exists()
    )
    print(f"{missing} missing: build stopped after {seconds:.2f} s")


@pytest.mark.build
def test_solvable_requirements_pass(mini: MiniWs, tmp_path: Path) -> None:
    channel = _channel(tmp_path / "forge", {"zlib-standin": "1.3.1"})
    _needs(mini, "zlib-standin >=1.3", channel)
    assert presolve(mini.plan()) == []
