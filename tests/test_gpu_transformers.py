"""moefuse as transformers' experts implementation, on the GPU: tiny random-weight models of every
family the integration supports (tests/moe_models.py), bf16 on CUDA, against transformers'
"eager" and "grouped_mm"; torch.compile and CUDA graphs; the layer cache; no weight copy for
gpt-oss's layout on Hopper.

Tolerances (docs/INTEGRATIONS.md): bf16 keeps 8 significant bits, so each rounding of a value is
off by up to 2^-9 (~2e-3) of it. Eager and moefuse round differently (h and the output of each
layer; eager also rounds each expert's product before summing), so one experts layer given the
same inputs differs by a few roundings: LAYER_TOL 1e-2. The logits of two layers and the head
compound that: LOGITS_TOL 2e-2. Sequences in which the two runs routed a token differently (a
near-tie flipped by the rounding of an earlier layer) are left out of the logits comparison. A
greedy continuation may leave eager's only at a flip: the shared prefix up to that token, run
whole, is routed differently somewhere, or its last logits agree within LOGITS_TOL."""

import gc
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import moe_models  # noqa: E402

from moefuse import reference  # noqa: E402
from moefuse.integrations import torch as moefuse_torch  # noqa: E402
from moefuse.integrations import transformers as integration  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU"),
]

LAYER_TOL = 1e-2
LOGITS_TOL = 2e-2
BATCH, PROMPT = 8, 8
# Every expert in every token's top k: no routing to flip, so compiled and captured runs compare
# with eager over the whole batch.
DENSE_ROUTING = dict(num_local_experts=2, num_experts=2, n_routed_experts=2, n_group=1, topk_group=1)


def relative(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tiny_model(family, rng, **fields):
    seed = int(rng.integers(2**31))
    return moe_models.tiny_model(family, dtype=torch.bfloat16, device="cuda", seed=seed, **fields)


def prompts(rng, batch=BATCH, length=PROMPT):
    return torch.from_numpy(rng.integers(1, 128, size=(batch, length))).cuda()


def run(model, ids, implementation):
    """(output, calls): the model's output under `implementation` and each experts call's
    (module, inputs, output)."""
    model.set_experts_implementation(implementation)
    calls = []

    def record(module, args, out):
        calls.append((module, tuple(a.clone() for a in args), out.clone()))

    hooks = [m.register_forward_hook(record) for m in moe_models.experts_modules(model)]
    try:
        with torch.no_grad():
            return moe_models.output_of(model(input_ids=ids, use_cache=False)), calls
    finally:
        for hook in hooks:
            hook.remove()


# Routers are discontinuous: besides an id flipping at a near-tie, a threshold may flip inside one
# (phimoe's sparsemixer masks logits by their distance to the largest before its softmax), so a
# token's weights can jump with its ids unchanged. Rounding moves a continuous router's weights by
# well under 1e-2; a jump is larger than this.
ROUTING_WEIGHT_JUMP = 5e-2


def same_routing(calls, other_calls, batch) -> torch.Tensor:
    """Per sequence: whether every experts call routed its tokens to the same experts, with
    weights that did not jump."""
    same = torch.ones(batch, dtype=torch.bool, device="cuda")
    for (_, (_, ids, weights), _), (_, (_, other_ids, other_weights), _) in zip(
        calls, other_calls, strict=True
    ):
        order, other_order = ids.argsort(-1), other_ids.argsort(-1)
        ids, other_ids = ids.gather(-1, order), other_ids.gather(-1, other_order)
        if ids.shape == other_ids.shape and ids.shape[0] % batch == 0:  # rows batch-major
            routed = ids == other_ids
            if weights.shape == ids.shape and other_weights.shape == ids.shape:
                jump = (
                    weights.gather(-1, order).float() - other_weights.gather(-1, other_order).float()
                ).abs()
                routed &= jump <= ROUTING_WEIGHT_JUMP
            same &= routed.reshape(batch, -1).all(1)
        else:
            same &= torch.equal(ids, other_ids)
    return same


def sequence_errors(got, expected) -> torch.Tensor:
    got, expected = got.double().flatten(1), expected.double().flatten(1)
    return (got - expected).norm(dim=1) / expected.norm(dim=1)


@pytest.mark.parametrize("family", sorted(moe_models.FAMILIES))
def test_logits_match_eager(family, rng):
    model = tiny_model(family, rng)
    ids = prompts(rng)
    expected, eager_calls = run(model, ids, "eager")
    grouped, _ = run(model, ids, "grouped_mm")
    got, calls = run(model, ids, "moefuse")
    assert torch.isfinite(got).all()

    # The first experts call has the same inputs in both runs: moefuse's output against float64.
    (experts, inputs, _), (_, _, out) = eager_calls[0], calls[0]
    expected_layer = reference_of(experts, *inputs)
    assert reference.relative_error(out.float().cpu().numpy(), expected_layer) < LAYER_TOL

    kept = same_routing(eager_calls, calls, BATCH)
    assert kept.sum() >= BATCH // 2, f"routing differs in {BATCH - kept.sum()} of {BATCH} sequences"
    errors = sequence_errors(got, expected)[kept]
    grouped_errors = sequence_errors(grouped, expected)[kept]
    assert errors.max() < LOGITS_TOL, f"moefuse {errors.tolist()}, grouped_mm {grouped_errors.tolist()}"


def reference_of(experts, x, ids, weights):
    """The experts' output in float64 (moefuse.reference, for the module's mapped activation and
    layout)."""
    spec = integration.experts_spec(experts)
    w1, w2, b1, b2 = (None if t is None else host(t) for t in integration._weights(experts))
    return reference.moe(
        host(x),
        w1,
        w2,
        host(weights),
        ids.cpu().numpy(),
        b1,
        b2,
        activation=spec.activation,
        transposed=spec.transposed,
        interleaved=spec.interleaved,
    )


def host(tensor):
    return tensor.detach().double().cpu().numpy()


def continuation_agreement(tokens, expected) -> tuple[int, list[int]]:
    """(tokens generated before each prompt's first disagreement, summed; the step of each
    disagreement, -1 for a prompt that agrees throughout)."""
    differs = tokens != expected
    steps = [int(row.nonzero()[0]) if row.any() else -1 for row in differs]
    return sum(len(row) if step < 0 else step for row, step in zip(differs, steps, strict=True)), steps


@pytest.mark.parametrize("family", [f for f in sorted(moe_models.FAMILIES) if moe_models.generates(f)])
def test_greedy_generation_agrees_with_eager_as_often_as_grouped_mm(family, rng):
    """Where moefuse's continuation leaves eager's more often than grouped_mm's does, each
    departure is a near-tie that rounding flipped (grouped_mm is bit for bit eager's arithmetic in
    most families, so it never flips one; moefuse rounds h once, in fp32, and flips a tie either
    way). Up to that step both runs generated the same tokens; that shared prefix, run whole
    without a cache under each, either routes some token differently (a router near-tie flipped
    upstream) or has the same routing and last-position logits within the logits tolerance."""
    model = tiny_model(family, rng)
    ids = prompts(rng, length=6)
    tokens = {}
    for implementation in ("eager", "grouped_mm", "moefuse"):
        model.set_experts_implementation(implementation)
        with torch.no_grad():
            sequences = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=0,
            )
        tokens[implementation] = sequences[:, ids.shape[1] :]
    grouped, _ = continuation_agreement(tokens["grouped_mm"], tokens["eager"])
    agreed, steps = continuation_agreement(tokens["moefuse"], tokens["eager"])
    if agreed >= grouped:
        return
    for b, step in enumerate(steps):
        if step >= 0:
            error = same_prefix_error(model, torch.cat([ids[b], tokens["eager"][b, :step]])[None])
            assert error is None or error < LOGITS_TOL, (
                f"prompt {b} step {step}: moefuse chose {int(tokens['moefuse'][b, step])} over "
                f"eager's {int(tokens['eager'][b, step])}, routing the same, with last logits "
                f"{error:.3g} from eager's (agreed {agreed} tokens, grouped_mm {grouped})"
            )


def same_prefix_error(model, prefix) -> float | None:
    """`prefix` [1, T] run whole under eager and moefuse: None where some token of it is routed
    differently, else moefuse's relative error in the logits at its last position."""
    expected, eager_calls = run(model, prefix, "eager")
    got, calls = run(model, prefix, "moefuse")
    if not same_routing(eager_calls, calls, batch=1).item():
        return None
    return relative(got[0, -1], expected[0, -1])


def test_deepseek_v3_routing_stays_transformers(rng):
    """Only the experts change: DeepSeek-V3's router (sigmoid scores, correction bias, groups,
    routed_scaling_factor) is transformers' own, so both runs hand the experts the same routing."""
    model = tiny_model("deepseek_v3", rng)
    ids = prompts(rng)
    _, eager_calls = run(model, ids, "eager")
    _, calls = run(model, ids, "moefuse")
    (_, (_, eager_ids, eager_weights), _), (_, (_, moefuse_ids, moefuse_weights), _) = (
        eager_calls[0],
        calls[0],
    )
    assert torch.equal(eager_ids, moefuse_ids) and torch.equal(eager_weights, moefuse_weights)
    assert len(calls) == len(moe_models.experts_modules(model))


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_compiled_fullgraph_matches_eager(family, rng):
    torch._dynamo.reset()
    model = tiny_model(family, rng, **DENSE_ROUTING)
    ids = prompts(rng)
    expected, _ = run(model, ids, "eager")
    model.set_experts_implementation("moefuse")  # before compiling: the choice is traced
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        got = moe_models.output_of(compiled(input_ids=ids, use_cache=False))
    assert relative(got, expected) < LOGITS_TOL


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_reduce_overhead_replays_new_inputs_like_eager(family, rng):
    """mode="reduce-overhead": the first calls warm up and record a CUDA graph, later ones replay
    it; every call has new tokens and matches eager."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny_model(family, rng, **DENSE_ROUTING)
    inputs = [prompts(rng) for _ in range(4)]
    expected = [run(model, ids, "eager")[0] for ids in inputs]  # first: hooks and switches retrace
    model.set_experts_implementation("moefuse")
    compiled = torch.compile(model, fullgraph=True, mode="reduce-overhead")
    for ids, eager_out in zip(inputs, expected, strict=True):
        with torch.no_grad():
            got = moe_models.output_of(compiled(input_ids=ids, use_cache=False)).clone()  # replays reuse it
        assert relative(got, eager_out) < LOGITS_TOL
    assert not counters["inductor"]["cudagraph_skips"], "inductor did not capture the forward in a graph"


def first_experts(model):
    return moe_models.experts_modules(model)[0]


def routed_inputs(rng, tokens, hidden, num_experts, k):
    """x, and k distinct experts per token with weights summing to 1."""
    x = torch.from_numpy(rng.standard_normal((tokens, hidden))).to("cuda", torch.bfloat16)
    every_expert = np.tile(np.arange(num_experts), (tokens, 1))
    ids = torch.from_numpy(rng.permuted(every_expert, axis=1)[:, :k]).cuda()
    weights = torch.from_numpy(rng.random((tokens, k))).to("cuda", torch.float32)
    return x, ids, weights / weights.sum(1, keepdim=True)


def eager(experts, x, ids, weights):
    with torch.no_grad():
        return experts.forward.__wrapped__(experts, x, ids, weights)


def moefuse_forward(experts, x, ids, weights):
    with torch.no_grad():
        return integration.experts_forward(experts, x, ids, weights)


def test_expert_parallel_sentinels_are_skipped(rng):
    """Slots routed to another rank's experts carry the id E_local and weight 0."""
    experts = first_experts(tiny_model("mixtral", rng))
    x, ids, weights = routed_inputs(rng, 64, 64, 8, 2)
    sentinel = torch.from_numpy(rng.random((64, 2)) < 0.3).cuda()
    ids, weights = ids.masked_fill(sentinel, 8), weights.masked_fill(sentinel, 0.0)
    expected = eager(experts, x, ids.masked_fill(sentinel, 0), weights)  # eager's one_hot has E classes
    assert relative(moefuse_forward(experts, x, ids, weights), expected) < LAYER_TOL


def entry_of(experts):
    (entry,) = (e for key, e in moefuse_torch._LAYERS.items() if key[0][0] == id(first_weight(experts)))
    return entry


def first_weight(experts):
    return experts.gate_up_proj if experts.has_gate else experts.up_proj


def test_layer_cache_is_reused_rebuilt_and_dropped(rng):
    experts = first_experts(tiny_model("mixtral", rng))
    x, ids, weights = routed_inputs(rng, 32, 64, 8, 2)
    moefuse_forward(experts, x, ids, weights)
    entry = entry_of(experts)
    moefuse_forward(experts, x, ids, weights)
    assert entry_of(experts) is entry  # reused

    old = experts.down_proj
    with torch.no_grad():
        experts.down_proj = torch.nn.Parameter(torch.randn_like(old) * old.std())
    assert relative(moefuse_forward(experts, x, ids, weights), eager(experts, x, ids, weights)) < LAYER_TOL
    dropped = weakref.ref(entry)
    del entry, old
    gc.collect()
    assert dropped() is None  # the replaced weight's layer went with it

    entry = entry_of(experts)
    with torch.no_grad():
        experts.gate_up_proj.mul_(-1.0)  # in place: the layer is rebuilt (it may read a copy)
    assert relative(moefuse_forward(experts, x, ids, weights), eager(experts, x, ids, weights)) < LAYER_TOL
    assert entry_of(experts) is not entry


def test_gpt_oss_layout_is_read_without_a_weight_copy_on_hopper(rng):
    """gpt-oss stores gate_up_proj [E, H, 2I] with gate and up interleaved, down_proj [E, I, H]:
    the Hopper kernels read both in place, so a forward takes far less than a weight's size."""
    import cupy
    from transformers.models.gpt_oss.configuration_gpt_oss import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the portable kernels read a copy of transposed weights (documented)")
    config = GptOssConfig(
        hidden_size=2048, intermediate_size=2048, num_local_experts=8, num_experts_per_tok=4
    )
    experts = GptOssExperts(config).to("cuda", torch.bfloat16)
    with torch.no_grad():
        for name, param in experts.named_parameters():
            param.normal_(0.0, 0.1 if "bias" in name else param.shape[-2] ** -0.5)
    smallest = min(experts.gate_up_proj.nbytes, experts.down_proj.nbytes)
    x, ids, weights = routed_inputs(rng, 64, 2048, 8, 4)
    pool = cupy.get_default_memory_pool()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    torch_before, pool_before = torch.cuda.memory_allocated(), pool.total_bytes()
    out = moefuse_forward(experts, x, ids, weights)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - torch_before < smallest // 2  # output and workspace
    assert pool.total_bytes() - pool_before < smallest // 2
    assert relative(out, eager(experts, x, ids, weights)) < LAYER_TOL
