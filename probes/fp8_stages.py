"""The fp8 forward stage by stage on a Hopper GPU (issue 16): each step of `MoELayer.steps` run
alone and its output checked against the float64 reference fed the kernel's own inputs, so a
failure names the step (quantise, GEMM1's h and h_s, GEMM2 with the finalize).

    python probes/fp8_stages.py            # a line per (shape, format, tile, path); exit 1 on a failure
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # moefuse from this checkout

import moefuse
from moefuse import fp8, overrides, reference

# (E, k, H, I, T): small layers, one with H % 128 != 0 and one with I % 128 != 0, and a larger one
SHAPES = [(8, 2, 512, 384, 37), (16, 8, 576, 256, 300), (32, 8, 256, 192, 129), (8, 2, 2048, 1024, 700)]
BOUND = 5e-3


def relative(got, want) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def check(shape, fmt, tile_m, tile_n, fused, out_dtype, rng) -> list[str]:
    import cupy

    experts, top_k, hidden, inter, tokens = shape
    x = rng.standard_normal((tokens, hidden)).astype(ml_dtypes.bfloat16)
    w1 = (rng.standard_normal((experts, 2 * inter, hidden)) / np.sqrt(hidden)).astype(ml_dtypes.bfloat16)
    w2 = (rng.standard_normal((experts, hidden, inter)) / np.sqrt(inter)).astype(ml_dtypes.bfloat16)
    b1 = (0.1 * rng.standard_normal((experts, 2 * inter))).astype(np.float32)
    b2 = (0.1 * rng.standard_normal((experts, hidden))).astype(np.float32)
    ids = np.argsort(-rng.standard_normal((tokens, experts)), axis=1)[:, :top_k].astype(np.int32)
    weights = rng.uniform(0.1, 1.0, (tokens, top_k)).astype(np.float32)
    w1_q, w1_s = fp8.quantize_weights(w1, fmt)
    w2_q, w2_s = fp8.quantize_weights(w2, fmt)
    d = cupy.asarray
    layer = moefuse.MoELayer(
        d(w1_q.view(np.uint8)), d(w2_q.view(np.uint8)), d(b1), d(b2), w1_scale=d(w1_s), w2_scale=d(w2_s)
    )
    out = cupy.full((tokens, hidden), np.nan, dtype=out_dtype)
    problems = []
    with overrides.override(tile_m=tile_m, tile_n=tile_n):
        out, steps = layer.steps(d(x), d(weights), d(ids), out=out, fused_finalize=fused)
        carved = next(iter(layer._carved.values()))
        arrays, routing = carved.arrays, carved.routing
        arrays["h"].fill(0x7F)  # NaN bytes: every row GEMM1 owns must be written
        arrays["h_s"].fill(np.nan)
        names = []
        for name, launch in steps:
            launch()
            names.append(name)
            cupy.cuda.runtime.deviceSynchronize()
            if name == "quantize":
                group = hidden if fmt == "tensor" else fp8.BLOCK
                want_q, want_s = reference.quantize_groups(x, group)
                got_q, got_s = arrays["x_q"].get(), arrays["x_s"].get()
                if not (np.array_equal(got_q, want_q.view(np.uint8)) and np.array_equal(got_s, want_s)):
                    problems.append(f"quantize: {(got_q != want_q.view(np.uint8)).sum()} bytes differ")
            if name == "gemm1":
                p2e = routing.permuted_to_expanded.get()
                live = p2e >= 0
                x_q, x_s = arrays["x_q"].get(), arrays["x_s"].get()
                want_q, want_s = reference.moe_fp8_h(x_q, x_s, w1_q, w1_s, ids, b1)
                got_q = arrays["h"].get()[live].view(fp8.E4M3)
                got_s = arrays["h_s"].get()[:, live].T
                rows = p2e[live]
                got = reference.dequantize_groups(got_q, got_s, 64)
                want = reference.dequantize_groups(want_q[rows], want_s[rows], 64)
                err = relative(got, want)
                same = float(np.mean(got_q.view(np.uint8) == want_q[rows].view(np.uint8)))
                err_s = relative(got_s, want_s[rows])
                print(f"    gemm1: h rel {err:.2e}, h bytes equal {same:.4f}, h_s rel {err_s:.2e}")
                if not err <= BOUND or not np.isfinite(got).all():
                    problems.append(f"gemm1: h rel {err:.2e}")
        got_out = out.get().astype(np.float64)
    p2e = routing.permuted_to_expanded.get()
    live = p2e >= 0
    h_q = np.zeros((tokens * top_k, inter), np.uint8)
    h_s = np.full((tokens * top_k, -(-inter // 64)), np.nan, np.float32)
    h_q[p2e[live]] = arrays["h"].get()[live]
    h_s[p2e[live]] = arrays["h_s"].get()[:, live].T
    want = reference.moe_fp8_from_h(h_q.view(fp8.E4M3), h_s, w2_q, w2_s, weights, ids, b2)
    err2 = relative(got_out, want)
    full = relative(got_out, reference.moe_fp8(x, w1_q, w1_s, w2_q, w2_s, weights, ids, b1, b2))
    unq = relative(got_out, reference.moe(x, w1, w2, weights, ids, b1, b2))
    print(f"    gemm2+finalize from the kernel's h: {err2:.2e}; whole layer {full:.2e}; vs bf16 {unq:.2e}")
    if not np.isfinite(got_out).all():
        problems.append(f"out: {np.sum(~np.isfinite(got_out))} non-finite")
    if not err2 <= BOUND:
        problems.append(f"gemm2: rel {err2:.2e}")
    if not full <= BOUND:
        problems.append(f"layer: rel {full:.2e}")
    return problems


def main() -> int:
    rng = np.random.default_rng(16)
    failures = 0
    cases = itertools.product(
        SHAPES, ["block", "tensor"], [(64, None), (128, None), (64, 256), (128, 128)], [True, False]
    )
    for shape, fmt, (tile_m, tile_n), fused in cases:
        if fmt == "tensor" and (tile_m, tile_n) != (128, None):
            continue
        out_dtype = np.float32 if fused and tile_m == 64 else ml_dtypes.bfloat16
        print(f"{shape} {fmt} tile_m={tile_m} tile_n={tile_n} fused={fused} out={np.dtype(out_dtype)}")
        try:
            problems = check(shape, fmt, tile_m, tile_n, fused, out_dtype, rng)
        except Exception as error:  # report and go on: one device call sees every case
            problems = [f"{type(error).__name__}: {error}"]
        for p in problems:
            print(f"    FAIL {p}")
        failures += bool(problems)
    print(f"{failures} failing cases")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
