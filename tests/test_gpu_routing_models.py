"""The model routers, moefuse.route's methods, on the GPU: against transformers' own router modules
on the same logits (the same ids and the same weight bits, docs/DESIGN.md D26), against the float64
reference at other sizes, the scaling factor applied, and graph capture."""

import ml_dtypes
import numpy as np
import pytest

import moefuse
from moefuse import reference
from tests.test_gpu_hardening import bits, capture

pytestmark = pytest.mark.gpu

BF16 = np.dtype(ml_dtypes.bfloat16)
TOKENS = 67  # not a whole number of router blocks (8 tokens each)

# name: (method, E, k, n_group, topk_group, scaling_factor, renormalize); the first of each router
# is a real model's configuration.
MODELS = {
    "gpt-oss-20b": ("topk_softmax", 32, 4, 1, 1, 1.0, True),
    "gpt-oss-120b": ("topk_softmax", 128, 4, 1, 1, 1.0, True),
    "deepseek-v3": ("sigmoid", 256, 8, 8, 4, 2.5, True),
    "kimi-k2": ("sigmoid", 384, 8, 1, 1, 2.827, True),
    "sigmoid-unnormalized": ("sigmoid", 64, 6, 8, 3, 1.0, False),
    "mixtral": ("softmax", 8, 2, 1, 1, 1.0, True),
    "qwen3-moe": ("softmax", 128, 8, 1, 1, 1.0, True),
    "qwen3-moe-unnormalized": ("softmax", 128, 8, 1, 1, 1.0, False),
}


def transformers_router(name: str, dtype):
    """transformers' router module for MODELS[name] on the GPU, its gate an identity (hidden size
    E), so that the logits it computes are the hidden states it is given."""
    import torch

    method, num_experts, k, n_group, topk_group, scaling_factor, renormalize = MODELS[name]
    if method == "topk_softmax":
        from transformers.models.gpt_oss.configuration_gpt_oss import GptOssConfig
        from transformers.models.gpt_oss.modeling_gpt_oss import GptOssTopKRouter

        router = GptOssTopKRouter(
            GptOssConfig(hidden_size=num_experts, num_local_experts=num_experts, num_experts_per_tok=k)
        )
    elif method == "sigmoid":
        from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

        config = DeepseekV3Config(
            hidden_size=num_experts,
            n_routed_experts=num_experts,
            num_experts_per_tok=k,
            n_group=n_group,
            topk_group=topk_group,
            routed_scaling_factor=scaling_factor,
            norm_topk_prob=renormalize,
        )
        router = DeepseekV3TopkRouter(config)
        dtype = torch.float32  # it computes in fp32 whatever its input, as DeepSeek-V3 does
    elif name == "mixtral":
        from transformers.models.mixtral.configuration_mixtral import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

        router = MixtralTopKRouter(
            MixtralConfig(hidden_size=num_experts, num_local_experts=num_experts, num_experts_per_tok=k)
        )
    else:
        from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

        config = Qwen3MoeConfig(
            hidden_size=num_experts,
            num_experts=num_experts,
            num_experts_per_tok=k,
            norm_topk_prob=renormalize,
        )
        router = Qwen3MoeTopKRouter(config)
    with torch.no_grad():
        router.weight.copy_(torch.eye(num_experts))
        if isinstance(getattr(router, "bias", None), torch.nn.Parameter):  # gpt-oss's
            router.bias.zero_()
    return router.to(device="cuda", dtype=dtype)


def keys_as_torch_ranks(method: str, hidden, bias):
    """What transformers' router ranks the experts by, computed by the same torch ops on the GPU:
    two experts whose keys are equal are a tie, which it may order either way."""
    import torch

    logits = hidden.float()
    if method == "softmax":
        return torch.softmax(logits, dim=-1)
    if method == "sigmoid":
        return logits.sigmoid() + bias
    return logits


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_routers_match_transformers_bit_for_bit(rng, name, dtype):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import cupy

    method, num_experts, k, n_group, topk_group, scaling_factor, renormalize = MODELS[name]
    logits = rng.standard_normal((TOKENS, num_experts)).astype(np.float32).astype(np.dtype(dtype))
    torch_dtype = getattr(torch, dtype)
    hidden = torch.from_numpy(logits.astype(np.float32)).to("cuda").to(torch_dtype)
    router = transformers_router(name, torch_dtype)
    bias = None
    if method == "sigmoid":
        bias = (rng.standard_normal(num_experts) * 0.05).astype(np.float32)
        router.e_score_correction_bias.copy_(torch.from_numpy(bias).to("cuda"))
    with torch.no_grad():
        their_logits, their_weights, their_ids = router(hidden)
    assert torch.equal(their_logits.float(), hidden.float()), "the identity gate changed the logits (TF32?)"
    torch.cuda.synchronize()

    weights, ids = moefuse.route(
        cupy.asarray(logits),
        k,
        renormalize,
        method=method,
        correction_bias=None if bias is None else cupy.asarray(bias),
        n_group=n_group,
        topk_group=topk_group,
        scaling_factor=scaling_factor,
    )
    weights, ids = weights.get(), ids.get()
    # transformers returns bf16 weights for bf16 logits from gpt-oss and Qwen3-MoE: the rounding
    # of our fp32 weights to bf16 is its rounding of the same fp32 values.
    if their_weights.dtype == torch.bfloat16:
        weights = weights.astype(BF16).astype(np.float32)
    their_weights, their_ids = their_weights.float().cpu().numpy(), their_ids.cpu().numpy()

    # Equal keys are ties, which torch's sort may order either way: there only, the ids may differ.
    keys = keys_as_torch_ranks(method, hidden, None if bias is None else torch.from_numpy(bias).to("cuda"))
    keys = keys.cpu().numpy()
    differ = ids != their_ids
    rows = np.nonzero(differ)[0]
    ours_key = keys[rows, ids[differ]]
    theirs_key = keys[rows, their_ids[differ]]
    np.testing.assert_array_equal(ours_key, theirs_key, err_msg="ids differ where the keys do not tie")
    assert differ.any(axis=1).mean() <= 0.5, "too many ties for the test to mean much"
    same = ~differ
    assert np.array_equal(bits(weights)[same], bits(their_weights)[same]), (
        f"weights differ in {np.count_nonzero(bits(weights)[same] != bits(their_weights)[same])} of "
        f"{np.count_nonzero(same)} places; largest difference "
        f"{np.abs(weights[same] - their_weights[same]).max():.3g}"
    )


@pytest.mark.parametrize("method", ["softmax", "topk_softmax", "sigmoid"])
def test_scaling_factor_is_applied(rng, method):
    """Dropping routed_scaling_factor (2.5 in DeepSeek-V3) would scale every token's expert output
    by 1/2.5, silently. The scaled weights are the unscaled ones times the factor, bit for bit, and
    renormalised weights sum to it."""
    import cupy

    groups = {"n_group": 8, "topk_group": 4} if method == "sigmoid" else {}
    logits = cupy.asarray(rng.standard_normal((TOKENS, 256)).astype(np.float32))
    scaled, scaled_ids = moefuse.route(logits, 8, method=method, scaling_factor=2.5, **groups)
    plain, plain_ids = moefuse.route(logits, 8, method=method, **groups)
    assert np.array_equal(scaled_ids.get(), plain_ids.get())
    assert np.array_equal(bits(scaled), bits(plain * np.float32(2.5)))
    np.testing.assert_allclose(scaled.get().sum(axis=1), 2.5, rtol=1e-5)
    np.testing.assert_allclose(plain.get().sum(axis=1), 1.0, rtol=1e-5)


# (method, E, k, n_group, topk_group): E up to 512, k up to E, groups of 2 to E experts.
SHAPES = [
    ("softmax", 512, 1, 1, 1),
    ("softmax", 300, 300, 1, 1),
    ("softmax", 3, 2, 1, 1),
    ("topk_softmax", 512, 64, 1, 1),
    ("topk_softmax", 33, 33, 1, 1),
    ("topk_softmax", 1, 1, 1, 1),
    ("sigmoid", 512, 8, 32, 4),
    ("sigmoid", 512, 200, 16, 8),
    ("sigmoid", 256, 128, 8, 4),  # k: every expert of the groups kept
    ("sigmoid", 60, 5, 30, 7),  # groups of 2
    ("sigmoid", 96, 10, 3, 2),
    ("sigmoid", 64, 64, 1, 1),
    ("sigmoid", 2, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("method, num_experts, k, n_group, topk_group", SHAPES)
def test_routers_match_the_float64_reference(rng, method, num_experts, k, n_group, topk_group, dtype):
    import cupy

    logits = (rng.standard_normal((TOKENS, num_experts)) * 2).astype(np.float32).astype(np.dtype(dtype))
    renormalize, scaling_factor = bool(rng.integers(2)), float(rng.uniform(0.5, 3.0))
    options = dict(method=method, n_group=n_group, topk_group=topk_group, scaling_factor=scaling_factor)
    if method == "sigmoid" and rng.integers(2):
        options["correction_bias"] = (rng.standard_normal(num_experts) * 0.05).astype(np.float32)
    device_options = {key: cupy.asarray(v) if isinstance(v, np.ndarray) else v for key, v in options.items()}
    weights, ids = moefuse.route(cupy.asarray(logits), k, renormalize, **device_options)
    want_weights, want_ids = reference.route(logits, k, renormalize, **options)
    weights, ids = weights.get(), ids.get()
    if method != "sigmoid":
        # The keys are the logits themselves, exact in both: the same picks, ties included.
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-7)
        return
    # Sigmoid keys are rounded in fp32: compare the tokens with no near-tie where the choice is
    # made (the k-th key against the next, the topk_group-th group against the next; an exact tie
    # is equal inputs, broken alike), by expert id (the kernel writes them in
    # torch.topk(sorted=False)'s order).
    keys, group_scores = reference.router_keys(
        logits, method, options.get("correction_bias"), n_group, topk_group
    )
    clean = np.ones(TOKENS, dtype=bool)
    for scores, chosen in ((keys, k), (group_scores, topk_group)):
        if chosen < scores.shape[1]:
            ranked = -np.sort(-scores, axis=1)
            gap = ranked[:, chosen - 1] - ranked[:, chosen]
            clean &= (gap == 0) | (gap > 1e-5)
    assert clean.mean() >= 0.5
    order, want_order = np.argsort(ids, axis=1), np.argsort(want_ids, axis=1)
    np.testing.assert_array_equal(
        np.take_along_axis(ids, order, 1)[clean], np.take_along_axis(want_ids, want_order, 1)[clean]
    )
    np.testing.assert_allclose(
        np.take_along_axis(weights, order, 1)[clean],
        np.take_along_axis(want_weights, want_order, 1)[clean],
        rtol=1e-5,
        atol=1e-7,
    )


def test_capture_routes_with_a_correction_bias_and_refuses_to_convert_one(rng):
    import cupy

    logits = cupy.asarray(rng.standard_normal((TOKENS, 256)).astype(np.float32))
    bias = cupy.asarray((rng.standard_normal(256) * 0.05).astype(np.float32))
    options = dict(method="sigmoid", n_group=8, topk_group=4, scaling_factor=2.5)
    eager = moefuse.route(logits, 8, correction_bias=bias, **options)
    stream, graph, captured = capture(lambda: moefuse.route(logits, 8, correction_bias=bias, **options))
    graph.launch(stream)
    stream.synchronize()
    for got, want in zip(captured, eager, strict=True):
        assert np.array_equal(bits(got), bits(want))

    bf16_bias = bias.astype(BF16)  # converted eagerly; under capture the copy is refused
    converted = moefuse.route(logits, 8, correction_bias=bf16_bias, **options)
    exact = moefuse.route(logits, 8, correction_bias=bf16_bias.astype(np.float32), **options)
    for got, want in zip(converted, exact, strict=True):
        assert np.array_equal(bits(got), bits(want))
    with pytest.raises(ValueError, match="correction_bias is bfloat16"):
        capture(lambda: moefuse.route(logits, 8, correction_bias=bf16_bias, **options))
