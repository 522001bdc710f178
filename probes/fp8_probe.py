"""Device call A of the issue 16 plan (section 6): what the fp8 kernels will rest on, measured in
one process on a Hopper GPU.

    python probes/fp8_probe.py                 # H100 / H200: a table; exit status 1 if a check fails
    python probes/fp8_probe.py --compile-only  # anywhere: NVRTC sm_90a, ptxas report, SASS check

1. QGMMA throughput on shared-memory-resident 128 x 128 x 128 e4m3 stages (probes/fp8_probe.cu):
   no promotion, promotion per 128, per 64, per 64 with two accumulator sets (within a stage, and
   pipelined across stages), each checked against float64 first; beside `torch._scaled_mm` 8192^3
   (rowwise scales, with and without fast accumulation).
2. QGMMA with NaN operands (e4m3fn has no inf code: an inf can only come from a scale, in the
   promotion's FFMA).
3. `torch._scaled_grouped_mm` on Mixtral's GEMM1 at T = 4096 (H 4096, 2I 28672, E 8, k 2),
   timed and checked on a sample of rows: the unfused fp8 baseline.
4. float8 intake: what CuPy does with ml_dtypes float8 arrays and torch float8 tensors, and
   moefuse.fp8.as_e4m3_device_array on a torch float8_e4m3fn tensor (must be a zero-copy uint8 view).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # moefuse from this checkout

from probe_tools import check_sass, median_ms  # noqa: E402

from moefuse import _nvrtc, fp8  # noqa: E402
from moefuse.reference import relative_error  # noqa: E402

SOURCE = Path(__file__).with_suffix(".cu")
MODES = {
    0: "no promotion",
    1: "promote per 128",
    2: "promote per 64",
    3: "per 64, 2 acc sets",
    4: "per 64, 2 sets, pipelined",
}
STAGE_FLOPS = 2 * 128**3  # one CTA, one 128 x 128 x 128 stage
ITERS = 20000  # stages per CTA per timed run (~10 ms at 1000 TFLOP/s on 132 SMs)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)

failures: list[str] = []
rows: list[tuple[str, str]] = []


def report(what: str, result: str, ok: bool = True) -> None:
    rows.append((what, result if ok else f"FAIL: {result}"))
    if not ok:
        failures.append(what)


def compile_probe():
    result = _nvrtc.compile_cubin(SOURCE, "sm_90a", ROOT / "cuda_src", "fp8_probe")
    resources = _nvrtc.parse_resources(result.log)
    if not resources:  # the GPU image's NVRTC 13.0 returns no ptxas report
        report("compile", f"NVRTC {_nvrtc.nvrtc_version()}: no ptxas report")
    for mode in MODES if resources else ():
        res = resources[f"qgmma_mode{mode}"]
        spills = res.spill_store_bytes + res.spill_load_bytes
        report(
            f"compile mode {mode} ({MODES[mode]})",
            f"{res.registers} regs at entry, {spills} B spilled",
            not spills,
        )
    warnings = sorted(set(re.findall(r"\(C75\d\d\)[^\n]*?function '(\w+)'", result.log)))
    report("ptxas C75xx warnings", ", ".join(warnings) or "none")
    return result.cubin


def qgmma_verdict(name: str, function: str) -> tuple[str, bool]:
    ok = "QGMMA.64x128x32.F32.E4M3.E4M3" in function and "USETMAXREG" in function and "STL" not in function
    return f"{function.count('QGMMA')} QGMMA, setmaxnreg, no local memory", ok


def torchmedian_ms(run, reps: int = 10) -> float:
    import torch

    run()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return float(np.median(times))


def random_e4m3(rng, shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32).astype(E4M3)


def expected_tile(a, b, scales, mode: int, iters: int) -> np.ndarray:
    """What one CTA writes: iters * A.B^T (mode 0), else sum over stages of s(stage, row half) * A.B^T."""
    product = a.astype(np.float64) @ b.astype(np.float64).T
    if mode == 0:
        return iters * product
    half = (np.arange(128) % 16) >= 8
    per_row = sum(np.where(half, scales[(it % 8) * 2 + 1], scales[(it % 8) * 2]) for it in range(iters))
    return per_row[:, None] * product


def run_qgmma(module, num_sms: int) -> None:
    import cupy

    rng = np.random.default_rng(16)
    a, b = random_e4m3(rng, (128, 128)), random_e4m3(rng, (128, 128))
    scales = rng.uniform(0.5, 2.0, 16).astype(np.float32)
    tiles = cupy.asarray(np.concatenate([a, b]).view(np.uint8))
    scales_gpu = cupy.asarray(scales)
    out = cupy.full((num_sms, 128, 128), np.nan, np.float32)
    for mode in MODES:
        kernel = module.get_function(f"qgmma_mode{mode}")

        def launch(iters, kernel=kernel, tiles=tiles):
            kernel((num_sms,), (384,), (tiles, scales_gpu, out, np.int32(iters)))

        launch(3)
        got = out.get()
        error = relative_error(got[0], expected_tile(a, b, scales, mode, 3))
        same = bool(np.array_equal(got, np.broadcast_to(got[0], got.shape)))
        report(f"QGMMA mode {mode} result", f"rel err {error:.2e}, CTAs agree: {same}", error < 1e-3 and same)
        ms = median_ms(lambda launch=launch: launch(ITERS))
        tflops = STAGE_FLOPS * ITERS * num_sms / ms / 1e9
        report(f"QGMMA mode {mode} ({MODES[mode]})", f"{tflops:7.1f} TFLOP/s ({ms:.2f} ms, {num_sms} CTAs)")

    # NaN operands: A[0, 0] and B[5, 7] (B row 9 all zero: NaN x 0 must still be NaN)
    a[0, 0], b[5, 7], b[9] = np.nan, np.nan, 0.0
    tiles = cupy.asarray(np.concatenate([a, b]).view(np.uint8))
    module.get_function("qgmma_mode1")((1,), (384,), (tiles, cupy.ones(16, np.float32), out, np.int32(1)))
    got = out[0].get()
    nan = np.zeros((128, 128), bool)
    nan[0, :], nan[:, 5] = True, True
    want = expected_tile(a, b, np.ones(16), 1, 1)
    finite_ok = relative_error(got[~nan], want[~nan]) < 1e-3
    where = bool(np.array_equal(np.isnan(got), nan))
    report(
        "QGMMA NaN operands",
        f"NaN at A's row, B's column (x 0 too): {where}; rest right: {finite_ok}",
        where and finite_ok,
    )


def run_scaled_mm() -> None:
    """The fp8 matmul ceiling, as shared DESIGN.md measures it."""
    import torch

    f8, n = torch.float8_e4m3fn, 8192
    a = torch.randn(n, n, device="cuda").to(f8)
    b = torch.randn(n, n, device="cuda").to(f8).t()  # column-major, as _scaled_mm wants
    sa, sb = torch.ones(n, 1, device="cuda"), torch.ones(1, n, device="cuda")
    for fast in (True, False):
        ms = torchmedian_ms(
            lambda fast=fast: torch._scaled_mm(a, b, sa, sb, out_dtype=torch.bfloat16, use_fast_accum=fast)
        )
        report(
            f"torch._scaled_mm 8192^3 fast_accum={fast}", f"{2 * n**3 / ms / 1e9:7.1f} TFLOP/s ({ms:.3f} ms)"
        )


def run_scaled_grouped_mm() -> None:
    import torch

    f8 = torch.float8_e4m3fn
    # Mixtral GEMM1 at T = 4096: 8192 pairs, 1024 per expert; rowwise scales for x and w
    experts, hidden, rows, pairs = 8, 4096, 2 * 14336, 8192
    per_expert = pairs // experts
    x = torch.randn(pairs, hidden, device="cuda").to(f8)
    w = (torch.randn(experts, rows, hidden, device="cuda") * 0.5).to(f8)
    scale_a = torch.rand(pairs, device="cuda") + 0.5
    scale_b = torch.rand(experts, rows, device="cuda") + 0.5
    offs = torch.arange(1, experts + 1, device="cuda", dtype=torch.int32) * per_expert

    def grouped():
        return torch._scaled_grouped_mm(
            x, w.transpose(-2, -1), scale_a, scale_b, offs=offs, out_dtype=torch.bfloat16
        )

    out = grouped()
    errors = []
    for e in range(experts):  # 16 rows of each expert against float32 of the same operands
        r = slice(e * per_expert, e * per_expert + 16)
        ref = (x[r].float() * scale_a[r, None]) @ (w[e].float() * scale_b[e][:, None]).T
        errors.append(float((out[r].float() - ref).norm() / ref.norm()))
    ms = torchmedian_ms(grouped)
    report(
        "torch._scaled_grouped_mm Mixtral GEMM1 T=4096",
        f"{2 * pairs * hidden * rows / ms / 1e9:7.1f} TFLOP/s ({ms:.3f} ms), rel err <= {max(errors):.1e}",
        max(errors) < 1e-2,
    )


def outcome(call) -> str:
    try:
        result = call()
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0][:90]}"
    return f"ok: {getattr(result, 'dtype', result)}"


def run_intake() -> None:
    import cupy

    bits = cupy.arange(256, dtype=np.uint8).reshape(16, 16)
    view = bits.view(E4M3)
    report("cupy.empty(float8_e4m3fn)", outcome(lambda: cupy.empty(4, E4M3)))
    report("cupy.asarray(numpy float8)", outcome(lambda: cupy.asarray(np.zeros(4, E4M3))))
    report("cupy float8 view .copy()", outcome(view.copy))
    report("cupy float8 view .astype(f32)", outcome(lambda: view.astype(np.float32)))
    report("cupy float8 view __dlpack__", outcome(view.__dlpack__))

    import torch

    t = torch.randn(64, 64, device="cuda").to(torch.float8_e4m3fn)
    report("cupy.from_dlpack(torch float8)", outcome(lambda: cupy.from_dlpack(t)))
    report("cupy.asarray(torch float8) (CAI)", outcome(lambda: cupy.asarray(t)))
    taken = fp8.as_e4m3_device_array(t, "w1")
    same = taken.dtype == np.uint8 and taken.data.ptr == t.data_ptr()
    same = same and np.array_equal(taken.get(), t.view(torch.uint8).cpu().numpy())
    report("fp8.as_e4m3_device_array(torch float8)", f"uint8 view, same memory and bytes: {same}", same)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-only", action="store_true", help="compile and check the SASS, no GPU")
    args = parser.parse_args()
    cubin = compile_probe()
    if args.compile_only:
        check_sass(cubin, report, qgmma_verdict)
    else:
        import cupy

        device = cupy.cuda.Device()
        if device.compute_capability != "90":
            print(f"needs a compute capability 9.0 GPU, found {device.compute_capability}")
            return 2
        name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
        name = name.decode() if isinstance(name, bytes) else name
        report("GPU", f"{name}, CuPy {cupy.__version__}, NVRTC {_nvrtc.nvrtc_version()}")
        from cupy.cuda import function

        module = function.Module()
        module.load(cubin)  # NVRTC's cubin from cuda.bindings: whole (shared DESIGN.md)
        steps = {
            "QGMMA": lambda: run_qgmma(module, device.attributes["MultiProcessorCount"]),
            "float8 intake": run_intake,
            "torch._scaled_mm": run_scaled_mm,
            "torch._scaled_grouped_mm": run_scaled_grouped_mm,
        }
        for what, step in steps.items():
            try:
                step()
            except Exception as error:  # one step's failure does not hide the others' results
                report(what, f"{type(error).__name__}: {error}", False)
    width = max(len(what) for what, _ in rows)
    for what, result in rows:
        print(f"{what:<{width}}  {result}")
    print(f"{len(failures)} failed: {', '.join(failures)}" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
