"""bench.py's report, progress lines, plot and baseline discovery, on made-up results (no GPU)."""

import importlib.util
import json

import pytest

from moefuse.info import Telemetry
from moefuse_bench import baselines, plot
from moefuse_bench.ceilings import Ceilings
from moefuse_bench.device import GpuInfo
from moefuse_bench.report import Meta, report
from moefuse_bench.runner import progress
from tests.test_device import load_bench


def measured(case: str, T: int, fused_ms: float, **times: float) -> dict:
    flops, nbytes = 2.0e9 * T, 1.0e9
    return {
        "case": case, "T": T, "mode": "graph", "notes": [], "fused_ms": fused_ms,
        "unfused_ms": 1.1 * fused_ms, "tflops": flops / fused_ms / 1e9, "gbps": nbytes / fused_ms / 1e6,
        "pct_floor": 90.0, "fused_over_unfused": 0.91, "flops": flops, "bytes": nbytes, "err": 1e-3,
        "speedup": min(times.values()) / fused_ms, **{f"{k}_ms": v for k, v in times.items()},
    }  # fmt: skip


@pytest.fixture
def results():
    meta = Meta(
        date="2026-12-07 10:00 UTC",
        command="python bench.py",
        gpu=GpuInfo("NVIDIA H200", "9.0", 139.8, 60 << 20, 13000, "14.2.0", "sm90"),
        ceilings=Ceilings(800.0, "bf16", 4000.0),
        dtype="bf16",
        torch="2.11.0",
        timing="CUDA events",
        baselines={
            "cupy": "per-expert cuBLAS loop through CuPy",
            "hf": 'transformers\' "grouped_mm" experts',
        },
        skipped_baselines=["vllm (vLLM fused_experts (Triton)) skipped: vllm is not installed"],
        gpu_start=Telemetry(1980, 1980, 3201, 3201, 90.0, 700.0, 33, ()),
        gpu_end="clocks and power n/a (NVML could not start)",
    )
    rows = [
        measured("mixtral", 1, 0.25, cupy=0.7, hf=0.4),
        measured("mixtral", 128, 0.98, cupy=1.5),  # hf failed here: no time
        {"case": "mixtral", "T": 4096, "skipped": "needs ~90 GiB free device memory"},
    ]
    return meta, rows


def test_report_has_the_gpu_state_a_column_per_baseline_and_the_skipped_ones(results):
    meta, rows = results
    text = report(meta, rows)
    assert "GPU at the start: SM 1980/1980 MHz, memory 3201/3201 MHz" in text
    assert "GPU at the end:   clocks and power n/a (NVML could not start)" in text
    assert (
        'baselines: cupy: per-expert cuBLAS loop through CuPy; hf: transformers\' "grouped_mm" experts'
        in text
    )
    assert "  vllm (vLLM fused_experts (Triton)) skipped: vllm is not installed" in text
    header = next(line for line in text.splitlines() if line.startswith("case"))
    assert header.split() == [
        "case", "T", "mode", "fused_ms", "TFLOP/s", "GB/s", "%floor", "unfused_ms", "f/u", "cupy_ms", "hf_ms",
        "speedup", "rel_err",
    ]  # fmt: skip
    second = next(line for line in text.splitlines() if line.startswith("mixtral") and " 128 " in line)
    assert second.split()[9:11] == ["1.5000", "n/a"]
    assert "note (mixtral T=4096): needs ~90 GiB free device memory" in text
    json.dumps({"meta": meta.to_json(), "results": rows})  # bench.py --json writes both


def test_progress_line_names_every_time(results):
    _, rows = results
    line = progress(rows[0], ["cupy", "hf", "vllm"])
    assert (
        line
        == "moefuse 0.2500 ms (graph, 90.0% of floor), cupy 0.7000 ms, hf 0.4000 ms; rel err vs cupy 1.0e-03"
    )


def test_plot_draws_every_case_and_implementation(results, tmp_path):
    pytest.importorskip("matplotlib")
    meta, rows = results
    rows = [*rows, measured("qwen3", 1, 0.05, cupy=1.7, hf=0.3), measured("qwen3", 16, 0.28, cupy=15.0)]
    path = tmp_path / "bench.png"
    plot.plot(meta, rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.achieved(rows[0], "fused_ms") == pytest.approx(
        (2.0e9 / 0.25e-3 / 1e12, 1.0e9 / 0.25e-3 / 1e9)
    )
    assert plot.achieved(rows[1], "hf_ms") is None


def test_plot_without_matplotlib_is_a_usage_error_before_measuring(monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a)
    )
    with pytest.raises(SystemExit) as exit_info:
        load_bench().parse_args(["--plot", "out.png"])
    assert exit_info.value.code == 2
    assert (
        "--plot needs matplotlib, which is not installed (python -m pip install matplotlib)"
        in capsys.readouterr().err
    )


def test_absent_baselines_are_skipped_with_a_note(monkeypatch):
    find_spec = importlib.util.find_spec
    present = {"torch", "transformers"}

    def only(name, *args):
        return find_spec("json") if name in present else None  # any spec stands for "installed"

    monkeypatch.setattr(importlib.util, "find_spec", only)
    found, notes = baselines.installed()
    assert [b.name for b in found] == ["torch", "hf"]
    assert [n.split(" ", 1)[0] for n in notes] == ["vllm", "sglang", "flashinfer"]
    assert all(
        n.endswith(f"{b.package} is not installed")
        for n, b in zip(notes, baselines.BASELINES[2:], strict=True)
    )
    present.clear()
    assert baselines.installed() == ([], ["torch is not installed: every baseline but CuPy's is skipped"])
