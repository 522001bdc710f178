"""The baselines moefuse is compared with: a CuPy per-expert loop (also the correctness reference),
and, where importable, what people would pick instead: torch._grouped_mm written out, transformers'
"grouped_mm" experts, vLLM's and SGLang's fused_experts and FlashInfer's CUTLASS fused MoE; with
fp8 weights (bench.py --weights fp8), torch._scaled_grouped_mm written out.

All but the CuPy loop run in torch, on tensors over the benchmark's memory (DLPack) and on its
stream. Each is a `Baseline` in BASELINES; one whose package is not installed is skipped with a
note. torch and the others are imported inside the functions alone, when asked for, and none is a
dependency of moefuse.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cupy as cp
import numpy as np

from moefuse.fp8 import AMAX_FLOOR, E4M3_MAX

from .dtypes import BF16, from_f32, swiglu, to_f32
from .shapes import Shape

Run = Callable[[int], Any]  # run(i): the [T, H] output of input set i


def cupy_baseline(
    w1: cp.ndarray, w2: cp.ndarray, k: int, bf16_mm: bool
) -> Callable[[cp.ndarray, cp.ndarray, cp.ndarray], cp.ndarray]:
    """Per-expert loop: sort by expert, gather rows, two matmuls per expert, CuPy finalize.
    Where cupy.matmul refuses bf16 (`bf16_mm` False), its matmuls upcast to fp32."""
    E, H = w1.shape[0], w1.shape[2]
    w1t = [w1[e].T for e in range(E)]  # [H, 2I] views: cuBLAS transposes, nothing is copied
    w2t = [w2[e].T for e in range(E)]  # [I, H]

    def mm(a: cp.ndarray, b: cp.ndarray) -> cp.ndarray:
        if a.dtype != BF16 or bf16_mm:
            return cp.matmul(a, b)
        return from_f32(cp.matmul(to_f32(a), to_f32(b)), a.dtype)

    def run(x: cp.ndarray, w: cp.ndarray, ids: cp.ndarray) -> cp.ndarray:
        T = x.shape[0]
        flat = ids.ravel()
        order = cp.argsort(flat)
        counts = cp.bincount(flat, minlength=E).get()  # host sync: allowed in the baseline
        ends = np.cumsum(counts)
        xs = x.view(cp.uint16)[order // k].view(x.dtype)  # [T*k, H] grouped by expert
        ys = cp.empty((T * k, H), dtype=cp.uint16)
        for e in np.flatnonzero(counts):
            lo, hi = int(ends[e] - counts[e]), int(ends[e])
            ys[lo:hi] = mm(swiglu(mm(xs[lo:hi], w1t[e])), w2t[e]).view(cp.uint16)
        y = cp.empty((T * k, H), dtype=cp.float32)
        y[order] = to_f32(ys.view(x.dtype))  # back to expanded (t*k + j) order
        out = cp.matmul(w[:, None, :], y.reshape(T, k, H))  # sum_j w[t,j] * y[t,j] in fp32
        return from_f32(out.reshape(T, H), x.dtype)

    return run


@dataclass(frozen=True)
class TorchCase:
    """One case's arrays as torch tensors over the same memory, and torch's handle on the
    benchmark's stream."""

    shape: Shape
    sets: list[tuple[Any, Any, Any]]  # x [T, H], topk_weights [T, k] fp32, topk_ids [T, k] int32
    w1: Any  # [E, 2I, H]: gate rows, then up rows
    w2: Any  # [E, H, I]
    stream: Any  # torch.cuda.ExternalStream


def torch_case(
    shape: Shape, sets: Sequence[Sequence[cp.ndarray]], w1: cp.ndarray, w2: cp.ndarray, stream: cp.cuda.Stream
) -> TorchCase:
    """The case in torch (DLPack: nothing is copied). Raises where torch has no CUDA."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} has no CUDA")

    def tt(a: cp.ndarray) -> Any:
        if a.dtype == BF16:  # should CuPy's DLPack export refuse bf16, go through uint16
            with contextlib.suppress(Exception):
                return torch.from_dlpack(a)
            return torch.from_dlpack(a.view(cp.uint16)).view(torch.bfloat16)
        return torch.from_dlpack(a)

    stream.synchronize()
    tsets = [(tt(x), tt(w), tt(ids)) for x, w, ids in sets]
    return TorchCase(shape, tsets, tt(w1), tt(w2), torch.cuda.ExternalStream(stream.ptr))


def grouped_sets(c: TorchCase) -> tuple[Any, list[tuple[Any, Any, Any]]]:
    """The expert ids (int32, for `by_expert`) and the input sets with flat weights and ids."""
    import torch

    experts = torch.arange(c.shape.E, dtype=torch.int32, device=c.w1.device)
    return experts, [(x, w.reshape(-1), ids.reshape(-1)) for x, w, ids in c.sets]


def by_expert(ids: Any, experts: Any, k: int) -> tuple[Any, Any, Any]:
    """(order, offs, token) of flat ids [T*k]: the pairs sorted by expert (stable), the int32 end
    of each expert's rows (the grouped GEMMs' `offs`) and each sorted pair's token."""
    import torch

    sorted_ids, order = torch.sort(ids, stable=True)
    offs = torch.searchsorted(sorted_ids, experts, right=True, out_int32=True)
    return order, offs, order // k


def swiglu_f32(h: Any, n_i: int) -> Any:
    """h [M, 2I] (gate | up) -> silu(gate) * up [M, I] in fp32."""
    import torch

    return torch.nn.functional.silu(h[:, :n_i].float()) * h[:, n_i:].float()


def scatter_add(y: Any, token: Any, weights: Any, x: Any) -> Any:
    """The finalize: out[t] = sum of weights * y over t's rows, in fp32, then in x's dtype."""
    import torch

    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    out.index_add_(0, token, y.float() * weights.unsqueeze(1))
    return out.to(x.dtype)


def grouped_mm(c: TorchCase) -> Run:
    """torch._grouped_mm for both GEMMs, SwiGLU, an index_add_ finalize."""
    import torch

    if not hasattr(torch, "_grouped_mm"):
        raise RuntimeError(f"torch {torch.__version__} has no torch._grouped_mm")
    k, n_i = c.shape.k, c.shape.I
    # _grouped_mm(mat_a [M, K], mat_b [E, K, N], offs=int32 group ends [E]) -> [M, N]. It takes
    # a column-major mat_b as is: w1 [E, 2I, H] -> [E, H, 2I] and w2 [E, H, I] -> [E, I, H].
    b1, b2 = c.w1.transpose(1, 2), c.w2.transpose(1, 2)
    experts, flat = grouped_sets(c)

    def run(i: int) -> Any:
        x, w, ids = flat[i]
        order, offs, token = by_expert(ids, experts, k)
        h = torch._grouped_mm(x.index_select(0, token), b1, offs=offs)
        y = torch._grouped_mm(swiglu_f32(h, n_i).to(x.dtype), b2, offs=offs)
        return scatter_add(y, token, w[order], x)

    return run


# torch._scaled_grouped_mm at its fastest: the tensor cores' own fp8 accumulation, not promoted
# to fp32 (moefuse's fp8 kernels promote per 128 of K).
SCALED_GROUPED_MM_FAST_ACCUM = True


def rowwise_fp8(a: Any) -> tuple[Any, Any]:
    """(q e4m3, scale fp32 [...]) of `a [..., K]` with one scale per row, by moefuse.fp8's recipe:
    scale = max(amax, 1e-4) / 448, q = e4m3(a / scale), saturated."""
    import torch

    scale = a.abs().amax(dim=-1).float().clamp(min=AMAX_FLOOR) / E4M3_MAX
    q = (a.float() / scale.unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX)
    return q.to(torch.float8_e4m3fn), scale


def rowwise_fp8_experts(w: Any) -> tuple[Any, Any]:
    """rowwise_fp8 of expert matrices w [E, N, K] (one scale per output channel: scale [E, N]),
    one expert at a time (fp32 temporaries of one matrix)."""
    import torch

    q = torch.empty(w.shape, dtype=torch.float8_e4m3fn, device=w.device)
    scale = torch.empty(w.shape[:2], dtype=torch.float32, device=w.device)
    for e in range(w.shape[0]):
        q[e], scale[e] = rowwise_fp8(w[e])
    return q, scale


def scaled_grouped_mm(c: TorchCase) -> Run:
    """The unfused fp8 pipeline in torch: x quantised per token, its rows gathered by expert,
    torch._scaled_grouped_mm, SwiGLU, h quantised per row, torch._scaled_grouped_mm, an index_add_
    finalize. Rowwise fp8 is the format this op takes (an fp32 scale per row of x and h and per
    output channel of each expert matrix), not the layers' 128 x 128 blocks: its weights are the
    benchmark's bf16 weights quantised per output channel, once, outside the timing. Groups need
    no padding: with a 2-D mat_a and a 3-D mat_b, torch checks the 16-byte alignment of a dynamic
    K or N only (GroupMMCommon.cuh, prepare_grouped_gemm_data), and here M is dynamic."""
    import torch

    if not hasattr(torch, "_scaled_grouped_mm"):
        raise RuntimeError(f"torch {torch.__version__} has no torch._scaled_grouped_mm")
    k, n_i = c.shape.k, c.shape.I
    (q1, s1), (q2, s2) = rowwise_fp8_experts(c.w1), rowwise_fp8_experts(c.w2)
    # mat_a [M, K] row-major, mat_b [E, K, N] column-major (the transposes of q1 [E, 2I, H] and
    # q2 [E, H, I], as probes/fp8_probe.py calls it), scale_a [M], scale_b [E, N], bf16 out.
    b1, b2 = q1.transpose(1, 2), q2.transpose(1, 2)
    experts, flat = grouped_sets(c)

    def gemm(a: Any, a_scale: Any, b: Any, b_scale: Any, offs: Any) -> Any:
        fast = SCALED_GROUPED_MM_FAST_ACCUM
        return torch._scaled_grouped_mm(
            a, b, a_scale, b_scale, offs=offs, out_dtype=torch.bfloat16, use_fast_accum=fast
        )

    def run(i: int) -> Any:
        x, w, ids = flat[i]
        order, offs, token = by_expert(ids, experts, k)
        x_q, x_s = rowwise_fp8(x)
        rows = x_q.view(torch.uint8).index_select(0, token).view(x_q.dtype)  # gathered as bytes
        h = gemm(rows, x_s.index_select(0, token), b1, s1, offs)
        h_q, h_s = rowwise_fp8(swiglu_f32(h, n_i))
        return scatter_add(gemm(h_q, h_s, b2, s2, offs), token, w[order], x)

    return run


def transformers_grouped_mm(c: TorchCase) -> Run:
    """transformers' "grouped_mm" experts implementation (what `experts_implementation=
    "grouped_mm"` dispatches to) on a Mixtral experts module holding the benchmark's weights, with
    int64 ids as transformers' routers give them."""
    import torch
    from transformers import MixtralConfig
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    s = c.shape
    dims = dict(hidden_size=s.H, intermediate_size=s.I, num_local_experts=s.E, num_experts_per_tok=s.k)
    config = MixtralConfig(**dims)
    with torch.device("meta"):  # no memory: the parameters are replaced by the benchmark's weights
        experts = MixtralExperts(config)
    experts.gate_up_proj = torch.nn.Parameter(c.w1, requires_grad=False)
    experts.down_proj = torch.nn.Parameter(c.w2, requires_grad=False)
    forward = ALL_EXPERTS_FUNCTIONS["grouped_mm"]
    sets = [(x, ids.long(), w) for x, w, ids in c.sets]
    return lambda i: forward(experts, *sets[i])


def vllm_fused_experts(c: TorchCase) -> Run:
    """vLLM's Triton fused_experts (w1 [E, 2I, H] gate then up, SiLU: moefuse's layout)."""
    from vllm.model_executor.layers.fused_moe import fused_experts

    return lambda i: fused_experts(c.sets[i][0], c.w1, c.w2, c.sets[i][1], c.sets[i][2])


def sglang_fused_experts(c: TorchCase) -> Run:
    """SGLang's Triton fused_experts, out of place (in place it would overwrite x)."""
    from sglang.srt.layers.moe.fused_moe_triton import fused_experts

    if "topk_output" not in inspect.signature(fused_experts).parameters:  # before SGLang 0.5
        return lambda i: fused_experts(c.sets[i][0], c.w1, c.w2, c.sets[i][1], c.sets[i][2], inplace=False)
    from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    config = MoeRunnerConfig(inplace=False)
    routes = [StandardTopKOutput(w, ids, None) for _, w, ids in c.sets]
    return lambda i: fused_experts(c.sets[i][0], c.w1, c.w2, routes[i], config)


def flashinfer_cutlass(c: TorchCase) -> Run:
    """FlashInfer's CUTLASS fused MoE (TensorRT-LLM's). Its fc1 holds up rows, then gate rows:
    the benchmark's w1 is copied once into that order (outside the timing)."""
    import torch
    from flashinfer.fused_moe import cutlass_fused_moe

    n_i = c.shape.I
    fc1 = torch.cat([c.w1[:, n_i:], c.w1[:, :n_i]], dim=1)

    def run(i: int) -> Any:
        x, w, ids = c.sets[i]
        out = cutlass_fused_moe(x, ids, w, fc1, c.w2, x.dtype, quant_scales=None)
        return out[0] if isinstance(out, (list, tuple)) else out  # a list in newer versions

    return run


@dataclass(frozen=True)
class Baseline:
    name: str  # the report's column, and the rows' keys f"{name}_ms" and f"err_{name}"
    package: str  # the import it needs (all need torch too)
    what: str
    build: Callable[[TorchCase], Run]
    grouped_mm: bool = False  # runs torch._grouped_mm (which has a slow per-group fallback)


BASELINES = (
    Baseline("torch", "torch", "torch._grouped_mm, SwiGLU and an index_add_ finalize", grouped_mm, True),
    Baseline("hf", "transformers", 'transformers\' "grouped_mm" experts', transformers_grouped_mm, True),
    Baseline("vllm", "vllm", "vLLM fused_experts (Triton)", vllm_fused_experts),
    Baseline("sglang", "sglang", "SGLang fused_experts (Triton)", sglang_fused_experts),
    Baseline("flashinfer", "flashinfer", "FlashInfer cutlass_fused_moe", flashinfer_cutlass),
)
FP8_BASELINES = (  # with fp8 weights (bench.py --weights fp8), these instead
    Baseline(
        "torch_fp8",
        "torch",
        "torch scaled_grouped_mm (rowwise fp8, unfused): torch._scaled_grouped_mm "
        f"(use_fast_accum={SCALED_GROUPED_MM_FAST_ACCUM}) for both GEMMs, x and h quantised per row, "
        "SwiGLU and an index_add_ finalize",
        scaled_grouped_mm,
    ),
)


def installed(fp8: bool = False) -> tuple[list[Baseline], list[str]]:
    """(the baselines whose packages are installed, a note for each skipped one): those of bf16
    weights, or with `fp8` those of fp8 weights. Looks for the packages without importing them."""
    if importlib.util.find_spec("torch") is None:
        which = "the fp8 baselines are" if fp8 else "every baseline but CuPy's is"
        return [], [f"torch is not installed: {which} skipped"]
    found, notes = [], []
    for b in FP8_BASELINES if fp8 else BASELINES:
        if importlib.util.find_spec(b.package) is None:
            notes.append(f"{b.name} ({b.what}) skipped: {b.package} is not installed")
        else:
            found.append(b)
    return found, notes


def prepare(b: Baseline, c: TorchCase) -> Run:
    """b's run(i), built (its one-time copies and conversions) and run on the benchmark's stream,
    without autograd."""
    import torch

    with torch.cuda.stream(c.stream), torch.no_grad():
        run = b.build(c)

    def on_stream(i: int) -> Any:
        with torch.cuda.stream(c.stream), torch.no_grad():
            return run(i)

    return on_stream
