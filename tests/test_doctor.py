"""`stackforge doctor` against nvidia-smi answers replayed by a real executable
(tests/data/nvidia-smi/replay), and the package checks against probe results."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from stackforge.cli import main
from stackforge.core.workspace import Workspace
from stackforge.run.doctor import Report, arch_list_covers, check_packages, expected_pins, parse_smi_csv

REPO_ROOT = Path(__file__).resolve().parents[1]
REPLAY = Path(__file__).parent / "data" / "nvidia-smi" / "replay"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(REPO_ROOT / "recipes" / "variants", root / "recipes" / "variants")
    shutil.copy(REPO_ROOT / "git-repos.txt", root / "git-repos.txt")
    shutil.copy(REPO_ROOT / "stack.yaml", root / "stack.yaml")
    return root


def doctor(monkeypatch, capsys, root: Path, case: str | None) -> tuple[int, dict]:
    """Run `stackforge doctor --json` with nvidia-smi replaying `case` (None: no nvidia-smi at all)."""
    if case is None:
        monkeypatch.setenv("STACKFORGE_NVIDIA_SMI", str(root / "no-such-nvidia-smi"))
    else:
        monkeypatch.setenv("STACKFORGE_NVIDIA_SMI", str(REPLAY))
        monkeypatch.setenv("NVIDIA_SMI_CASE", case)
    code = main(["--root", str(root), "doctor", "--json"])
    return code, json.loads(capsys.readouterr().out)


def levels(report: dict) -> list[tuple[str, str]]:
    return [(p["level"], p["what"]) for p in report["problems"]]


@pytest.mark.parametrize(
    ("case", "env", "names"),
    [
        ("p40", "pascal", ["Tesla P40"]),
        ("p100", "pascal", ["Tesla P100-PCIE-16GB", "Tesla P100-PCIE-16GB"]),
        ("v100", "volta", ["Tesla V100-SXM2-32GB"]),
    ],
)
def test_single_family_boxes(
    monkeypatch, capsys, workspace: Path, case: str, env: str, names: list[str]
) -> None:
    code, report = doctor(monkeypatch, capsys, workspace, case)
    assert code == 0
    assert report["recommended_env"] == env
    assert report["recommended_devices"] is None
    assert [g["name"] for g in report["gpus"]] == names
    assert {g["env"] for g in report["gpus"]} == {env}
    assert report["driver"] == "580.95.05"
    assert not [p for p in report["problems"] if "driver" in p["what"]]


def test_mixed_box_says_which_devices_go_to_which_env(monkeypatch, capsys, workspace: Path) -> None:
    code, report = doctor(monkeypatch, capsys, workspace, "mixed")
    assert code == 0  # a decision to make, not an error
    assert report["recommended_env"] == "pascal"  # two P40s against one V100
    assert report["recommended_devices"] == "0,2"
    (mixed,) = [p for p in report["problems"] if p["what"].startswith("mixed GPUs")]
    assert (
        "pascal: CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,2 pixi run -e pascal" in mixed["advice"]
    )
    assert "volta: CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1 pixi run -e volta" in mixed["advice"]


def test_no_nvidia_smi_is_a_plain_report(monkeypatch, capsys, workspace: Path) -> None:
    code, report = doctor(monkeypatch, capsys, workspace, None)
    assert code == 0
    assert report["recommended_env"] is None and report["gpus"] == [] and report["nvidia_smi"] is None
    assert report["smi_message"].startswith("no NVIDIA GPU/driver found")
    # the human-readable form says so and gives advice
    monkeypatch.setenv("STACKFORGE_NVIDIA_SMI", str(workspace / "absent"))
    assert main(["--root", str(workspace), "doctor"]) == 0
    text = capsys.readouterr().out
    assert "no NVIDIA GPU/driver found" in text and "install the NVIDIA R580 driver" in text


def test_driver_without_gpus(monkeypatch, capsys, workspace: Path) -> None:
    code, report = doctor(monkeypatch, capsys, workspace, "none")
    assert code == 0
    assert report["recommended_env"] is None
    assert levels(report) == [("warning", "nvidia-smi found no GPU")]


def test_driver_not_loaded_is_an_error(monkeypatch, capsys, workspace: Path) -> None:
    code, report = doctor(monkeypatch, capsys, workspace, "no-driver")
    assert code == 1
    assert "couldn't communicate with the NVIDIA driver" in report["problems"][0]["what"]


def test_driver_newer_than_r580(monkeypatch, capsys, workspace: Path) -> None:
    code, report = doctor(monkeypatch, capsys, workspace, "new-driver")
    assert code == 1
    assert report["recommended_env"] == "volta"
    (problem,) = report["problems"]
    assert problem["level"] == "error" and "newer than R580" in problem["what"]
    assert "580" in problem["advice"]


def test_driver_older_than_cuda_12_9_minimum(monkeypatch, capsys, workspace: Path) -> None:
    code, report = doctor(monkeypatch, capsys, workspace, "old-driver")
    assert code == 0  # runs through minor-version compatibility: a warning
    (problem,) = report["problems"]
    assert problem["level"] == "warning"
    assert "535.247.01 is older than CUDA 12.9's minimum 575.51.03" in problem["what"]


def test_driver_without_compute_cap_field_falls_back_to_names(monkeypatch, capsys, workspace: Path) -> None:
    code, report = doctor(monkeypatch, capsys, workspace, "r470")
    assert code == 1
    assert report["gpus"][0]["compute_capability"] == "6.1" and report["recommended_env"] == "pascal"
    assert "too old for CUDA 12.9" in report["problems"][0]["what"]


def test_real_package_probe_of_this_interpreter(monkeypatch, capsys, workspace: Path) -> None:
    """The probe runs in a child interpreter: here it sees the dev venv's triton 3.5.1."""
    _code, report = doctor(monkeypatch, capsys, workspace, "p40")
    pkgs = report["packages"]
    assert pkgs["python"] == sys.executable
    from importlib.metadata import version

    assert pkgs["triton"] == version("triton")


def test_parse_smi_csv() -> None:
    gpus = parse_smi_csv("Tesla P40, 6.1, 580.95.05\nNVIDIA H100 80GB HBM3, 9.0, 580.159.04\n\n")
    assert [(g.index, g.arch, g.driver) for g in gpus] == [(0, 61, "580.95.05"), (1, 90, "580.159.04")]


def test_arch_list_coverage() -> None:
    cu126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
    assert arch_list_covers(cu126, 61)  # sm_60 SASS runs on 6.1
    assert not arch_list_covers(["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"], 70)
    assert arch_list_covers(["sm_75", "compute_70"], 70)


def _report(case_gpus: str, packages: dict) -> Report:
    report = Report(nvidia_smi="nvidia-smi", gpus=parse_smi_csv(case_gpus), packages=packages)
    for gpu in report.gpus:
        gpu.env = "pascal" if gpu.arch < 70 else "volta"
    return report


def test_recorded_h200_torch_on_a_p40_is_caught(workspace: Path) -> None:
    """The package probe recorded on the device machine (torch 2.11.0 cu130, triton 3.6.0) judged
    for a P40: CUDA 13, no sm_6x kernels, versions off the pins."""
    probe = json.loads((REPLAY.parent / "h200-probe.json").read_text())
    report = _report("Tesla P40, 6.1, 580.95.05", probe)
    check_packages(report, Workspace(workspace))
    whats = [p.what for p in report.problems]
    assert any(w.startswith("torch 2.11.0 is installed; this stack pins 2.9.1") for w in whats)
    assert any(w.startswith("triton 3.6.0 is installed; this stack pins 3.5.1") for w in whats)
    assert any("built with CUDA 13.0" in w for w in whats)
    assert any("has no kernels for GPU 0 (Tesla P40, sm_61)" in w for w in whats)
    assert not report.ok
    # stock torch on a real Pascal card also reports the Inductor gate
    report = _report("Tesla P40, 6.1, 580.95.05", probe | {"has_triton": False})
    check_packages(report, Workspace(workspace))
    assert any("has_triton() is False" in p.what for p in report.problems)


def test_recorded_h200_box_is_not_a_target(monkeypatch, capsys, workspace: Path) -> None:
    code, report = doctor(monkeypatch, capsys, workspace, "h200")
    assert code == 0
    assert report["recommended_env"] is None
    assert report["gpus"][0] | {"env": None} == {
        "index": 0,
        "name": "NVIDIA H200",
        "arch": 90,
        "compute_capability": "9.0",
        "driver": "580.159.04",
        "env": None,
        "memory_mib": None,  # recorded before the doctor asked for memory.total
    }
    assert any("is not a stackforge target" in p["what"] for p in report["problems"])


def test_stackforge_torch_on_pascal_is_clean(workspace: Path) -> None:
    report = _report(
        "Tesla P40, 6.1, 580.95.05",
        {
            "python": "python3",
            "torch": "2.9.1",
            "triton": "3.5.1",
            "vllm": "0.14.0",
            "torch_cuda": "12.9",
            "arch_list": ["sm_60", "sm_61"],
            "cuda_available": True,
            "has_triton": True,
        },
    )
    check_packages(report, Workspace(workspace))
    assert report.problems == []


def test_pins_come_from_the_stack_file(workspace: Path) -> None:
    """The versions doctor expects are stack.yaml's (by distribution name), not git-repos.txt's ref=."""
    assert expected_pins(Workspace(workspace)) == {"torch": "2.9.1", "triton": "3.5.1", "vllm": "0.14.0"}
    (workspace / "stack.yaml").write_text('packages:\n  vllm: "0.33.0"\n  pytorch: "2.14.0"\n')
    assert expected_pins(Workspace(workspace)) == {"torch": "2.14.0", "vllm": "0.33.0"}
    assert expected_pins(None) == {}
