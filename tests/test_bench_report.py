"""bench.py's report, progress lines, plot and baseline discovery, on made-up results (no GPU); its
--weights fp8 mode's options, floor bytes and report."""

import dataclasses
import importlib.util
import json

import numpy as np
import pytest

from moefuse import reference
from moefuse.info import Telemetry
from moefuse_bench import baselines, plot
from moefuse_bench.ceilings import Ceilings
from moefuse_bench.device import GpuInfo
from moefuse_bench.dtypes import BF16
from moefuse_bench.problems import Case, expert_bytes, moe_problem
from moefuse_bench.report import Meta, report
from moefuse_bench.runner import Options, compare, progress
from moefuse_bench.shapes import SHAPES, Shape
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


# ------------------------------------------------------------------ --weights fp8 (issue 16)


def measured_fp8(case: str, T: int, fp8_ms: float, **times: float) -> dict:
    """A made-up fp8 row: the fp8 layer's time, each comparison's, as runner.compare completes them."""
    row = measured(case, T, fp8_ms, **times)
    row |= {"err": 4.1e-2, "err_bf16": 3e-3, "err_torch_fp8": 5.2e-2}
    compare(row, times, floor_ms=0.9 * fp8_ms)  # "pct_floor": 90.0
    return row


@pytest.fixture
def fp8_results(results):
    meta, _ = results
    meta = dataclasses.replace(
        meta,
        ceilings=Ceilings(
            1350.0, "fp8 e4m3 (rowwise scales, bf16 out, use_fast_accum=True)", 4220.0, "torch._scaled_mm"
        ),
        weights="fp8",
        baselines={
            "bf16": "moefuse's bf16 layer",
            "torch_fp8": "torch scaled_grouped_mm (rowwise fp8, unfused)",
        },
    )
    staged = measured_fp8("qwen3", 16, 0.05, bf16=0.08)  # torch_fp8 failed here: no time
    fused = {f"{n} (fused)": 0.01 for n in ("quantize", "plan", "gemm1", "gemm2")}
    staged["stages"] = fused | {"gemm2 (unfused)": 0.0098, "finalize (unfused)": 0.003}
    staged |= {"gemm2_fused_over_store": 0.01 / 0.0098, "gemm2_fused_over_store_finalize": 0.01 / 0.0128}
    rows = [measured_fp8("mixtral", 1, 0.25, bf16=0.4, torch_fp8=0.5), staged]
    return meta, rows


def test_weights_fp8_is_an_option_and_bf16_the_default(capsys):
    bench = load_bench()
    assert bench.parse_args([]).weights == "bf16"
    args = bench.parse_args(["--weights", "fp8", "--shape", "mixtral,deepseek,qwen3"])
    assert args.weights == "fp8" and [s.name for s in args.shapes] == ["mixtral", "deepseek", "qwen3"]
    # bench.py fills every Options field from the argument of the same name
    assert {f.name for f in dataclasses.fields(Options)} - {"timing"} <= set(vars(args))
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--weights", "int4"])
    assert exit_info.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err


def test_an_fp8_case_reads_one_byte_per_weight_and_the_block_scales():
    mixtral = SHAPES["mixtral"]  # H 4096, I 14336: w1 scales 224 x 32, w2 scales 32 x 112
    x_and_out = 2 * 16 * 4096 * 2  # bf16
    fp8 = Case(mixtral, 16, False, BF16, [], distinct=8.0, fp8=True)
    assert fp8.bytes == 8 * (3 * 4096 * 14336 + 4 * (224 * 32 + 32 * 112)) + x_and_out
    assert Case(mixtral, 16, False, BF16, [], distinct=8.0).bytes == 8 * 3 * 4096 * 14336 * 2 + x_and_out
    # partial last blocks: H 2112 is 17 blocks, 2I 1408 is 11, I 704 is 6
    odd = Shape("odd", 2112, 704, 4, 2)
    assert expert_bytes(odd, 1, block_scales=True) == 3 * 2112 * 704 + 4 * (11 * 17 + 17 * 6)
    assert expert_bytes(odd, 2) == 3 * 2112 * 704 * 2
    # T = 16 reads the weights: the floor is the copy's
    ceilings = Ceilings(1350.0, "fp8", 4220.0, "torch._scaled_mm")
    assert ceilings.floor_seconds(fp8.flops, fp8.bytes) == pytest.approx(fp8.bytes / 4220e9)


def test_report_with_fp8_rows_has_each_comparison_its_share_of_the_floor_and_ratio(fp8_results):
    meta, rows = fp8_results
    text = report(meta, rows)
    assert "dtype bf16, weights fp8 e4m3 with fp32 scales per 128 x 128 block" in text
    assert (
        "ceilings: fp8 e4m3 (rowwise scales, bf16 out, use_fast_accum=True) matmul 8192^3 1350.0 TFLOP/s "
        "(torch._scaled_mm); 1 GiB D2D copy 4220 GB/s" in text
    )
    header = next(line for line in text.splitlines() if line.startswith("case"))
    assert header.split() == [
        "case", "T", "mode", "fp8_ms", "TFLOP/s", "GB/s", "%floor", "unfused_ms", "f/u",
        "bf16_ms", "bf16%floor", "bf16/fp8", "torch_fp8_ms", "torch_fp8%floor", "torch_fp8/fp8",
        "rel_err", "err_bf16", "err_torch_fp8",
    ]  # fmt: skip
    first = next(line for line in text.splitlines() if line.startswith("mixtral")).split()
    assert first[3] == "0.2500" and first[6] == "90.0"
    # bf16 and torch_fp8: time, share of the floor (0.225 ms), time over fp8's; then the errors
    assert first[9:] == [
        "0.4000", "56.2", "1.60x", "0.5000", "45.0", "2.00x", "4.1e-02", "3.0e-03", "5.2e-02"
    ]  # fmt: skip
    second = next(line for line in text.splitlines() if line.startswith("qwen3")).split()
    assert second[12:15] == ["n/a", "n/a", "n/a"]
    assert "NAME/fp8 = NAME's time / fp8's (above 1: fp8 is faster); bf16: moefuse's bf16 layer" in text
    stages = text.split("(--stages): ", 1)[1].splitlines()
    assert stages[0].startswith(
        "quantize (fused), plan (fused), gemm1 (fused), gemm2 (fused), gemm2 (unfused)"
    )
    assert stages[1].endswith("gemm2 fused/store 1.020, fused/(store + finalize) 0.781")
    json.dumps({"meta": meta.to_json(), "results": rows})


def test_bf16_report_is_unchanged_by_the_fp8_mode(results):
    meta, rows = results
    text = report(meta, rows)
    assert "torch 2.11.0, dtype bf16\n" in text and "(cuBLAS via CuPy); 1 GiB D2D copy" in text
    assert "speedup = best baseline / fused; rel_err = ||moefuse fused - cupy|| / ||cupy||" in text


def test_plot_draws_fp8_rows(fp8_results, tmp_path):
    pytest.importorskip("matplotlib")
    meta, rows = fp8_results
    plot.plot(meta, rows, tmp_path / "fp8.png")
    assert (tmp_path / "fp8.png").stat().st_size > 0


def test_fp8_progress_line_names_the_fp8_layer(fp8_results):
    _, rows = fp8_results
    line = progress(rows[0], ["bf16", "torch_fp8"], "moefuse fp8")
    assert line == (
        "moefuse fp8 0.2500 ms (graph, 90.0% of floor), bf16 0.4000 ms, torch_fp8 0.5000 ms; "
        "rel err vs cupy 4.1e-02"
    )


def test_fp8_baselines_are_torch_scaled_grouped_mm(monkeypatch):
    find_spec = importlib.util.find_spec
    present = {"torch"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: find_spec("json") if name in present else None
    )
    found, notes = baselines.installed(fp8=True)
    assert [b.name for b in found] == ["torch_fp8"] and notes == []
    assert found[0].what.startswith("torch scaled_grouped_mm (rowwise fp8, unfused)")
    present.clear()
    assert baselines.installed(fp8=True) == ([], ["torch is not installed: the fp8 baselines are skipped"])


def test_scaled_grouped_mm_baseline_pipeline_on_the_cpu(monkeypatch):
    """The torch fp8 baseline's routing, quantisation and finalize, with torch._scaled_grouped_mm
    replaced by a float loop that checks its operands' layout (torch has no CPU kernel for it)."""
    torch = pytest.importorskip("torch")

    def scaled_grouped_mm(a, b, scale_a, scale_b, offs, out_dtype, use_fast_accum):
        assert a.dtype == b.dtype == torch.float8_e4m3fn and a.stride(1) == 1 and b.stride(1) == 1
        assert scale_a.shape == a.shape[:1] and scale_b.shape == (b.shape[0], b.shape[2])
        out, start = torch.zeros(a.shape[0], b.shape[2]), 0
        for e, end in enumerate(offs.tolist()):
            out[start:end] = (a[start:end].float() * scale_a[start:end, None]) @ (b[e].float() * scale_b[e])
            start = end
        return out.to(out_dtype)

    monkeypatch.setattr(torch, "_scaled_grouped_mm", scaled_grouped_mm, raising=False)
    shape, T = Shape("small", 256, 128, 8, 2), 37
    p = moe_problem(np.random.default_rng(0), "bf16", T, shape.H, shape.I, shape.E, shape.k, bias=False)
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids)

    def bf16(a: np.ndarray):
        return torch.from_numpy(a.astype(np.float32)).bfloat16()

    routes = (torch.from_numpy(p.topk_weights), torch.from_numpy(p.topk_ids))
    case = baselines.TorchCase(shape, [(bf16(p.x), *routes)], bf16(p.w1), bf16(p.w2), None)
    got = baselines.scaled_grouped_mm(case)(0).double().numpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 8e-2  # fp8: about 6e-2 here
