"""Layouts over several GPUs: which vLLM servers `stackforge serve` plans for recorded nvidia-smi
answers (tests/data/nvidia-smi, replayed by a real executable), with which vLLM arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT

from stackforge.core.console import Failure, UsageError
from stackforge.core.workspace import Workspace
from stackforge.run import fleet
from stackforge.run.gpus import Gpu
from stackforge.run.preflight import ask_doctor
from stackforge.run.vllm_args import serve_argv
from stackforge.spec.envs import load_env

REPLAY = Path(__file__).parent / "data" / "nvidia-smi" / "replay"
WS = Workspace(REPO_ROOT)
GB = 10**9


def box(monkeypatch: pytest.MonkeyPatch, case: str) -> list[Gpu]:
    monkeypatch.setenv("STACKFORGE_NVIDIA_SMI", str(REPLAY))
    monkeypatch.setenv("NVIDIA_SMI_CASE", case)
    return ask_doctor(WS).gpus


def argv(server: fleet.Server) -> dict[str, str]:
    args = serve_argv(load_env(WS, server.env), server.vllm_args(), environ={})
    return dict(zip(args[2::2], args[3::2], strict=True))


def test_two_p40_default_to_one_server_per_gpu(monkeypatch):
    gpus = box(monkeypatch, "p40x2")
    assert [(g.env, g.memory_mib) for g in gpus] == [("pascal", 24576)] * 2
    f = fleet.plan(gpus, model_bytes=1 * GB)
    assert f.layout == "per-gpu" and f.router and (f.host, f.port) == ("127.0.0.1", 8000)
    assert [(s.env, s.visible_devices, s.port) for s in f.servers] == [
        ("pascal", "0", 8001),
        ("pascal", "1", 8002),
    ]
    assert f.reason.startswith("2 x Tesla P40 (24576 MiB): 1.0 GB of weights fit one card")
    assert "X-Session-ID" in f.reason
    a = argv(f.servers[0])
    assert a["--host"] == "127.0.0.1" and a["--port"] == "8001" and a["--dtype"] == "float16"
    assert "--tensor-parallel-size" not in a
    assert f.servers[1].environment() == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}


def test_two_p40_with_a_model_too_big_for_one_card(monkeypatch):
    f = fleet.plan(box(monkeypatch, "p40x2"), model_bytes=20 * GB)  # 20 GB > 60% of 24 GiB
    assert f.layout == "tp" and not f.router
    (server,) = f.servers
    assert server.visible_devices == "0,1" and server.port == 8000
    assert argv(server)["--tensor-parallel-size"] == "2"
    assert "need 2 cards' memory" in f.reason
    with pytest.raises(Failure, match="do not fit"):
        fleet.plan(box(monkeypatch, "p40x2"), model_bytes=40 * GB)


def test_four_p100_layouts(monkeypatch):
    gpus = box(monkeypatch, "p100x4")
    auto = fleet.plan(gpus)  # size unknown: per GPU
    assert [s.visible_devices for s in auto.servers] == ["0", "1", "2", "3"]
    assert [s.port for s in auto.servers] == [8001, 8002, 8003, 8004]
    assert "weights of unknown size (taken to fit one card)" in auto.reason
    tp = fleet.plan(gpus, "tp")
    assert [(s.visible_devices, argv(s)["--tensor-parallel-size"]) for s in tp.servers] == [("0,1,2,3", "4")]
    dp = fleet.plan(gpus, "dp", host="0.0.0.0", port=9000)
    (server,) = dp.servers
    assert argv(server)["--data-parallel-size"] == "4" and argv(server)["--host"] == "0.0.0.0"
    assert server.port == 9000 and "--tensor-parallel-size" not in argv(server)
    # 14 GB of weights need two 16 GiB cards: two tensor-parallel pairs behind the router
    pairs = fleet.plan(gpus, model_bytes=14 * GB)
    assert [(s.visible_devices, s.tensor_parallel, s.port) for s in pairs.servers] == [
        ("0,1", 2, 8001),
        ("2,3", 2, 8002),
    ]
    assert pairs.router


def test_p40_and_v100_get_an_environment_each(monkeypatch):
    gpus = box(monkeypatch, "p40+v100")
    f = fleet.plan(gpus, model_bytes=1 * GB)
    assert [(s.env, s.visible_devices, s.port) for s in f.servers] == [
        ("pascal", "0", 8001),
        ("volta", "1", 8002),
    ]
    assert f.router and "mixed box: pascal, volta" in f.reason
    assert [argv(s)["--port"] for s in f.servers] == ["8001", "8002"]
    with pytest.raises(Failure, match="the cards differ"):
        fleet.plan([*gpus, Gpu(2, "Tesla V100-PCIE-16GB", 70, "580.95.05", "volta", 16384)], "tp")
    tp = fleet.plan(gpus, "tp")  # one card per environment: tensor parallel of one, behind the router
    assert [s.tensor_parallel for s in tp.servers] == [1, 1] and tp.router


def test_mixed_recording_three_cards(monkeypatch):
    f = fleet.plan(box(monkeypatch, "mixed"), "dp")  # P40, V100, P40
    assert [(s.env, s.visible_devices, s.data_parallel) for s in f.servers] == [
        ("pascal", "0,2", 2),
        ("volta", "1", 1),
    ]


def test_eight_v100(monkeypatch):
    gpus = box(monkeypatch, "v100x8")
    f = fleet.plan(gpus, model_bytes=15 * GB)
    assert len(f.servers) == 8 and f.layout == "per-gpu"
    big = fleet.plan(gpus, model_bytes=70 * GB)  # 70 GB: four 32 GiB cards per server, two servers
    assert [(s.visible_devices, argv(s)["--tensor-parallel-size"]) for s in big.servers] == [
        ("0,1,2,3", "4"),
        ("4,5,6,7", "4"),
    ]
    chosen = fleet.select(gpus, fleet.parse_gpu_list("6,7"))
    two = fleet.plan(chosen, "tp")
    assert [(s.visible_devices, s.port) for s in two.servers] == [("6,7", 8000)]
    one = fleet.plan(fleet.select(gpus, [3]))
    assert one.servers == (fleet.Server("volta", (3,), 8000),) and not one.router


def test_gpus_no_environment_runs_are_left_out(monkeypatch):
    gpus = [*box(monkeypatch, "p40x2"), Gpu(2, "NVIDIA A100-SXM4-40GB", 80, "580.95.05", None, 40960)]
    f = fleet.plan(gpus)
    assert [s.visible_devices for s in f.servers] == ["0", "1"]
    assert f.skipped == (
        "GPU 2 (NVIDIA A100-SXM4-40GB, compute capability 8.0): no stackforge environment runs on it",
    )
    with pytest.raises(Failure, match="no GPU here runs a stackforge environment"):
        fleet.plan(gpus[2:])


def test_odd_cards_outside_a_tensor_parallel_group_are_reported(monkeypatch):
    three = box(monkeypatch, "p100x4")[:3]
    f = fleet.plan(three, model_bytes=14 * GB)
    assert [s.visible_devices for s in f.servers] == ["0,1"]
    assert f.skipped and "not a whole tensor-parallel group" in f.skipped[0]


def test_options_and_refusals():
    assert fleet.parse_gpu_list("all") == [] and fleet.parse_gpu_list("0, 2") == [0, 2]
    for bad in ("", "a", "1,1", "-1"):
        with pytest.raises(UsageError):
            fleet.parse_gpu_list(bad)
    with pytest.raises(UsageError, match="no GPU 5"):
        fleet.select([Gpu(0, "Tesla P40", 61, "580")], [5])
    for args in (["--tensor-parallel-size", "2"], ["-tp=2"], ["--data_parallel_size", "2"]):
        with pytest.raises(UsageError, match="set by the layout"):
            fleet.refuse_layout_flags(args)
    fleet.refuse_layout_flags(["--model", "m", "--max-num-seqs", "40"])
    assert fleet.take_address(["m", "--host", "0.0.0.0", "--port=9000", "--seed", "1"]) == (
        ["m", "--seed", "1"],
        "0.0.0.0",
        9000,
    )
    assert fleet.take_address([]) == ([], "127.0.0.1", 8000)
    with pytest.raises(UsageError, match="--layout"):
        fleet.plan([Gpu(0, "Tesla P40", 61, "580", "pascal")], "ring")


def test_model_size_from_a_directory_and_the_cache(tmp_path: Path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model-00001.safetensors").write_bytes(b"\0" * 1000)
    (model / "model-00002.safetensors").write_bytes(b"\0" * 500)
    assert fleet.model_bytes(str(model), tmp_path / "hub") == 1500
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"\0" * 42)
    assert fleet.model_bytes("org/name", tmp_path / "hub") == 42
    assert fleet.model_bytes("org/absent", tmp_path / "hub") is None
