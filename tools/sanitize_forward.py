"""A small forward through every kernel, for compute-sanitizer (memcheck, racecheck, synccheck,
initcheck): every Hopper family at both tile heights, both finalize paths and output types, an
expert-parallel slice, the routers on fp32 and bf16 logits, the caller's workspace, a forward
captured in a CUDA graph and replayed, and every activation on every weight layout; on Hopper the
fp8 layer too (both scale formats, both finalize paths, both tile heights, a graph replay;
`--fp8` runs that part alone).

compute-sanitizer --tool memcheck python3 tools/sanitize_forward.py
"""

import argparse

import cupy
import ml_dtypes
import numpy as np

import moefuse
from moefuse_bench.variants import FAMILIES


def caller_workspace_and_graph(layer, x, weights, ids) -> None:
    """The forward on a zeroed caller workspace, then captured on a side stream and replayed."""
    for fused in (True, False):
        nbytes = layer.workspace_bytes(x.shape[0], ids.shape[1], fused_finalize=fused)
        workspace = cupy.zeros(nbytes, dtype=cupy.uint8)
        out = cupy.empty(x.shape, dtype=x.dtype)
        layer(x, weights, ids, out=out, fused_finalize=fused, workspace=workspace)
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            layer(x, weights, ids, out=out, fused_finalize=fused, workspace=workspace)
            graph = stream.end_capture()
            for _ in range(2):
                graph.launch(stream)
        stream.synchronize()


def layouts(rng, x, weights, ids, experts: int) -> None:
    """Every activation kernel on every weight layout (interleaved and transposed weights are the
    standard ones re-laid out; only the kernels' memory accesses matter here)."""
    bf16 = ml_dtypes.bfloat16
    hidden, inter = x.shape[1], 200
    for activation, rows in (("gpt_oss", 2 * inter), ("gelu_tanh", 2 * inter), ("relu2", inter)):
        w1 = cupy.asarray((rng.standard_normal((experts, rows, hidden)) * hidden**-0.5).astype(bf16))
        w2 = cupy.asarray((rng.standard_normal((experts, hidden, inter)) * inter**-0.5).astype(bf16))
        b1 = cupy.asarray(rng.standard_normal((experts, rows)).astype(bf16))
        for transposed in (False, True):
            for interleaved in (False, True) if activation != "relu2" else (False,):
                w1s, w2s = (
                    cupy.ascontiguousarray(w.transpose(0, 2, 1)) if transposed else w for w in (w1, w2)
                )
                layer = moefuse.MoELayer(
                    w1s, w2s, b1, activation=activation, transposed=transposed, interleaved=interleaved
                )
                for family in FAMILIES:
                    with moefuse.override(family=family):
                        layer(x, weights, ids)
                        layer(x[:8], weights[:8], ids[:8], fused_finalize=False)


def fp8_layers(rng, weights, ids, experts: int) -> None:
    """The fp8 forward (Hopper only): quantiser, GEMM1 with h's scales, GEMM2 reading them by TMA,
    both formats, fused and stored, 64- and 128-row tiles, fp32 output, a captured replay."""
    from moefuse import _device, backends, fp8

    if not backends.for_device(_device.require_gpu()).fp8:  # Hopper's kernels (not MOEFUSE_BACKEND=sm80)
        return
    hidden, inter = 320, 192  # H % 128 != 0 (a partial scale block), I % 128 != 0
    x = cupy.asarray(rng.standard_normal((ids.shape[0], hidden)).astype(ml_dtypes.bfloat16))
    w1 = (rng.standard_normal((experts, 2 * inter, hidden)) * hidden**-0.5).astype(np.float32)
    w2 = (rng.standard_normal((experts, hidden, inter)) * inter**-0.5).astype(np.float32)
    b1 = cupy.asarray(rng.standard_normal((experts, 2 * inter)).astype(np.float32))
    for fmt in fp8.FORMAT_KINDS:
        (q1, s1), (q2, s2) = (fp8.quantize_weights(cupy.asarray(w), fmt) for w in (w1, w2))
        layer = moefuse.MoELayer(q1, q2, b1, w1_scale=s1, w2_scale=s2)
        for tile_m in (64, 128):
            with moefuse.override(tile_m=tile_m):
                for fused in (True, False):
                    layer(x, weights, ids, fused_finalize=fused)
                layer(x, weights, ids, out_dtype=np.float32)
    caller_workspace_and_graph(layer, x, weights, ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fp8", action="store_true", help="the fp8 layer only")
    only_fp8 = parser.parse_args().fp8
    rng = np.random.default_rng(0)
    bf16 = ml_dtypes.bfloat16
    num_tokens, hidden, inter, experts, top_k = 100, 264, 200, 16, 4
    x = cupy.asarray(rng.standard_normal((num_tokens, hidden)).astype(bf16))
    w1 = cupy.asarray((rng.standard_normal((experts, 2 * inter, hidden)) * hidden**-0.5).astype(bf16))
    w2 = cupy.asarray((rng.standard_normal((experts, hidden, inter)) * inter**-0.5).astype(bf16))
    b1 = cupy.asarray(rng.standard_normal((experts, 2 * inter)).astype(bf16))
    b2 = cupy.asarray(rng.standard_normal((experts, hidden)).astype(bf16))
    logits = rng.standard_normal((num_tokens, experts)).astype(np.float32)
    moefuse.route(cupy.asarray(logits.astype(bf16)), top_k)
    weights, ids = moefuse.route(cupy.asarray(logits), top_k)
    ids[::7, 0] = -1
    if only_fp8:
        fp8_layers(rng, weights, ids, experts)
        cupy.cuda.Device().synchronize()
        print("sanitize_forward: done")
        return
    for tile_m in (64, 128):
        moefuse.plan(ids, experts, tile_m=tile_m)
    layer = moefuse.MoELayer(w1[4:12], w2[4:12], b1[4:12], b2[4:12], first_expert=4, num_experts=experts)
    decode = 48  # tokens: the Hopper kernels' 64-row tiles (the full batch takes 128-row tiles)
    many = cupy.asarray(rng.integers(0, experts, (2000, top_k)).astype(np.int32))
    big_x = cupy.asarray(rng.standard_normal((2000, hidden)).astype(bf16))
    big_w = cupy.asarray(rng.random((2000, top_k)).astype(np.float32))
    for family in FAMILIES:  # every Hopper kernel family at every size
        with moefuse.override(family=family):
            for fused in (True, False):
                layer(x, weights, ids, fused_finalize=fused)
                layer(x, weights, ids, fused_finalize=fused, out_dtype=np.float32)
                layer(x[:decode], weights[:decode], ids[:decode], fused_finalize=fused)
            moefuse.MoELayer(w1, w2)(big_x, big_w, many)
    caller_workspace_and_graph(layer, x, weights, ids)
    layouts(rng, x, weights, ids, experts)
    fp8_layers(rng, weights, ids, experts)
    moefuse.route(cupy.asarray(logits), top_k, method="topk_softmax")
    bias = cupy.asarray(rng.standard_normal(experts).astype(np.float32))
    moefuse.route(
        cupy.asarray(logits.astype(bf16)),
        top_k,
        method="sigmoid",
        correction_bias=bias,
        n_group=4,
        topk_group=2,
        scaling_factor=2.5,
    )
    cupy.cuda.Device().synchronize()
    print("sanitize_forward: done")


if __name__ == "__main__":
    main()
