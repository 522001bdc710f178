"""Real models' Experts modules under CUDA-graph replay: transformers' "grouped_mm" vs "moefuse".

    python tools/bench_models.py --families qwen3,mixtral --tokens 1,16,128 --reps 30

Issue 15's table (docs/PERF.md). Each family's Experts module is built from its transformers config
with the model's sizes, bf16 on the GPU, its weights drawn there ~N(0, 1/fan_in) (DeepSeek-V3's
routed experts are 22 GB), one family at a time. Per T, three calls are captured with
torch.cuda.graph: the module's forward with `config._experts_implementation` "grouped_mm", the
same module with "moefuse", and a bare `moefuse.MoELayer` call on the module's weights (DLPack
views; the activation and layout the integration picks; `out=` preallocated, workspace reserved).
A call whose capture fails is timed eagerly, and its cell says "eager". Rounds alternate between
the three; every replay is timed by CUDA events after an L2 flush. Outputs must agree with
grouped_mm's. Prints a markdown table; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import cupy as cp
import torch
import transformers
from transformers import DeepseekV3Config, GptOssConfig, MixtralConfig, Qwen3MoeConfig
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Experts
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts
from transformers.models.mixtral.modeling_mixtral import MixtralExperts
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

import moefuse
from moefuse.integrations.transformers import _weights, experts_spec
from moefuse_bench.device import free_pools, log, short
from moefuse_bench.timing import L2Flush, Timing, event_samples

MAX_ERR = 2e-2  # relative norm against grouped_mm's output
CALLS = ("grouped_mm", "moefuse", "bare")  # the two experts implementations, a bare MoELayer call


@dataclass(frozen=True)
class Family:
    model: str  # whose sizes these are
    config: type
    experts: type
    sizes: dict  # the config's fields for them
    weights_dtype: torch.dtype  # top_k_weights as the family's router returns them


FAMILIES = {
    "qwen3": Family(
        "Qwen3-30B-A3B",
        Qwen3MoeConfig,
        Qwen3MoeExperts,
        dict(hidden_size=2048, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8),
        torch.bfloat16,  # Qwen3MoeTopKRouter casts to the logits' dtype
    ),
    "mixtral": Family(
        "Mixtral-8x7B",
        MixtralConfig,
        MixtralExperts,
        dict(hidden_size=4096, intermediate_size=14336, num_local_experts=8, num_experts_per_tok=2),
        torch.float32,  # MixtralTopKRouter: softmax of the logits in fp32
    ),
    "gpt-oss": Family(
        "gpt-oss-20b",
        GptOssConfig,
        GptOssExperts,  # transposed, interleaved, biases, its own gate
        dict(hidden_size=2880, intermediate_size=2880, num_local_experts=32, num_experts_per_tok=4),
        torch.bfloat16,  # GptOssTopKRouter: softmax in the logits' dtype
    ),
    "deepseek-v3": Family(
        "DeepSeek-V3",
        DeepseekV3Config,
        DeepseekV3Experts,  # the routed experts
        dict(hidden_size=7168, moe_intermediate_size=2048, n_routed_experts=256, num_experts_per_tok=8),
        torch.float32,  # DeepseekV3TopkRouter scores in fp32
    ),
}

Run = Callable[[int], object]  # as event_samples calls it


def build_experts(family: Family) -> torch.nn.Module:
    """The family's Experts module, bf16 on the GPU, weights and biases ~N(0, 1/fan_in) drawn there:
    built on the meta device, so no host copy of the weights is ever made."""
    config = family.config(**family.sizes)
    with torch.device("meta"):
        module = family.experts(config)
    module = module.to(torch.bfloat16).to_empty(device="cuda")
    hidden = config.hidden_size
    intermediate = module.down_proj.numel() // (module.num_experts * hidden)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.normal_(0.0, (hidden if name.startswith("gate_up") else intermediate) ** -0.5)
    return module


def bare_layer(module: torch.nn.Module) -> moefuse.MoELayer:
    """A MoELayer over the module's weights in place, with the integration's activation and layout."""
    spec = experts_spec(module)
    weights = (None if w is None else w.detach() for w in _weights(module))  # DLPack exports no grad
    return moefuse.MoELayer(
        *weights, activation=spec.activation, transposed=spec.transposed, interleaved=spec.interleaved
    )


def captured(call: Callable[[], torch.Tensor]) -> tuple[Run, torch.Tensor, str]:
    """(run, out, mode): replays of a CUDA graph of `call`, which writes `out`; should the capture
    fail, eager calls (out: the warm-up call's)."""
    out = call()  # warm-up: moefuse compiles its kernels and builds the integration's layer
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            graph_out = call()
    except Exception as e:
        log(f"  warning: CUDA graph capture failed ({short(e, 160)}); timing eager calls")
        torch.cuda.synchronize()
        return (lambda _: call()), out, "eager"
    return (lambda _: graph.replay()), graph_out, "graph"


def calls(
    module: torch.nn.Module, layer: moefuse.MoELayer, inputs: tuple
) -> dict[str, Callable[[], torch.Tensor]]:
    """The three forwards of one batch: the module's with each implementation, and the bare layer."""
    x, ids, weights = inputs

    def forward(implementation: str) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            module.config._experts_implementation = implementation  # read on each forward
            return module(x, ids, weights)

        return call

    out = torch.empty_like(x)
    views = [cp.from_dlpack(t) for t in (x, weights, ids, out)]
    layer.reserve(x.shape[0], ids.shape[1])

    def bare() -> torch.Tensor:
        with cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):  # the capture's stream
            layer(*views[:3], out=views[3])
        return out

    return {"grouped_mm": forward("grouped_mm"), "moefuse": forward("moefuse"), "bare": bare}


def routed_batch(module: torch.nn.Module, family: Family, num_tokens: int) -> tuple:
    """(hidden_states [T, H] bf16, top_k_index [T, k] int64 of k distinct experts, top_k_weights
    [T, k] softmax-normalized in the router's dtype)."""
    k = module.config.num_experts_per_tok
    x = torch.randn(num_tokens, module.config.hidden_size, dtype=torch.bfloat16, device="cuda")
    ids = torch.rand(num_tokens, module.num_experts, device="cuda").topk(k, dim=1).indices
    weights = torch.randn(num_tokens, k, device="cuda").softmax(dim=1).to(family.weights_dtype)
    return x, ids, weights


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref.float()).norm() / ref.float().norm())


def time_case(module, layer, family: Family, num_tokens: int, args, stream, flush) -> tuple[dict, dict, dict]:
    """Per call: its median ms, its relative error against grouped_mm's output, its mode."""
    runs = {
        name: captured(call)
        for name, call in calls(module, layer, routed_batch(module, family, num_tokens)).items()
    }
    timing = Timing(reps=args.reps // args.rounds, warmup=3)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):  # alternating, so that clock drift hits all three alike
        for name, (run, _, _) in runs.items():
            samples[name] += event_samples(run, stream, timing, flush=flush)
    ref = runs["grouped_mm"][1]
    errors = {name: rel_err(out, ref) for name, (_, out, _) in runs.items() if name != "grouped_mm"}
    ms = {name: statistics.median(s) for name, s in samples.items()}
    return ms, errors, {name: mode for name, (_, _, mode) in runs.items()}


def bench_family(key: str, tokens: list[int], args, stream, flush) -> list[str]:
    """Prints the family's rows; returns its failures (outputs that disagree, moefuse not captured)."""
    family, start, failures = FAMILIES[key], time.perf_counter(), []
    module = build_experts(family)
    layer = bare_layer(module)
    for num_tokens in tokens:
        ms, errors, modes = time_case(module, layer, family, num_tokens, args, stream, flush)
        case, err = f"{family.model} T={num_tokens}", max(errors.values())
        if err >= MAX_ERR:
            failures.append(f"{case}: outputs differ from grouped_mm's by {errors}")
        if modes["moefuse"] != "graph" or modes["bare"] != "graph":
            failures.append(f"{case}: moefuse ran eagerly ({modes})")
        grouped, fused, bare = (
            f"{ms[n]:.4f}" + ("" if modes[n] == "graph" else f" ({modes[n]})") for n in CALLS
        )
        speedup, overhead = ms["grouped_mm"] / ms["moefuse"], ms["moefuse"] / ms["bare"]
        print(
            f"| {family.model} | {num_tokens} | {grouped} | {fused} | {speedup:.2f}x | "
            f"{bare} | {overhead:.3f} | {err:.1e} |",
            flush=True,
        )
    del module, layer
    gc.collect()
    free_pools()
    log(f"{family.model}: {time.perf_counter() - start:.0f} s")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"of {', '.join(FAMILIES)}")
    parser.add_argument("--tokens", default="1,16,128,1024,4096", help="T values")
    parser.add_argument("--reps", type=int, default=30, help="timed replays per call and case (>= 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating the calls; --reps split")
    args = parser.parse_args()
    families = args.families.split(",")
    if unknown := [f for f in families if f not in FAMILIES]:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    try:
        tokens = [int(t) for t in args.tokens.split(",")]
    except ValueError as e:
        parser.error(f"--tokens: {e}")
    if args.reps < args.rounds:
        parser.error("--reps must be at least --rounds")
    if not torch.cuda.is_available():
        sys.exit("bench_models.py needs a CUDA GPU")

    print(
        f"{moefuse.gpu_name()}, {datetime.date.today()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, cupy {cp.__version__}, moefuse {moefuse.__version__}: "
        f"`python {' '.join(sys.argv)}`; CUDA-graph replays unless marked eager\n"
    )
    print(
        "| family | T | grouped_mm ms | moefuse ms | speedup | bare layer ms | moefuse / bare | max rel err |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    torch_stream = torch.cuda.Stream()
    stream = cp.cuda.ExternalStream(torch_stream.cuda_stream)  # the same stream, for CuPy and moefuse
    failures = []
    with torch.no_grad(), torch.cuda.stream(torch_stream), stream:
        flush = L2Flush(stream)
        for key in families:
            failures += bench_family(key, tokens, args, stream, flush)
    if failures:
        sys.exit("\n".join(failures))


if __name__ == "__main__":
    main()
