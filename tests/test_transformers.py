"""moefuse.integrations.transformers without a GPU: which activation and layout each transformers
family maps to, checked end to end on CPU with the operator's kernel replaced by moefuse's float64
reference (so a wrong mapping shows in the logits), the errors for what moefuse lacks, and
torch.compile(fullgraph=True) tracing through the operator. Skipped where torch or transformers
is not installed (CI); test_gpu_transformers.py runs the real kernels."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import moe_models  # noqa: E402
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS  # noqa: E402

import moefuse  # noqa: E402
from moefuse.integrations import torch as moefuse_torch  # noqa: E402
from moefuse.integrations import transformers as integration  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def reference_kernel():
    """moefuse::experts on CPU tensors: moefuse.reference.moe, with the operator's arguments."""
    moefuse_torch.experts.register_kernel("cpu")(moe_models.reference_experts)


def logits(model, ids, implementation: str):
    model.set_experts_implementation(implementation)
    with torch.no_grad():
        return moe_models.output_of(model(input_ids=ids, use_cache=False))


def relative(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_importing_registers_moefuse():
    assert ALL_EXPERTS_FUNCTIONS["moefuse"] is integration.experts_forward
    integration.register()  # again: still the one entry
    assert list(ALL_EXPERTS_FUNCTIONS).count("moefuse") == 1


@pytest.mark.parametrize("family", sorted(moe_models.FAMILIES))
def test_every_family_maps_to_what_eager_computes(family, rng):
    """fp32 on CPU: the operator (moefuse's reference for the mapped activation and layout) gives
    eager's logits to fp32 rounding; any wrong gate, clamp, bias or layout would show far above."""
    model = moe_models.tiny_model(family, seed=int(rng.integers(2**31)))
    assert moe_models.experts_modules(model), f"{family}: the tiny model has no experts"
    ids = torch.from_numpy(rng.integers(1, 128, size=(2, 9)))
    assert relative(logits(model, ids, "moefuse"), logits(model, ids, "eager")) < 1e-5


SWIGLU = moefuse.Activation("swiglu")
SPECS = {  # family -> (activation, transposed, interleaved) of its experts
    "mixtral": (SWIGLU, False, False),
    "qwen3_moe": (SWIGLU, False, False),
    "deepseek_v3": (SWIGLU, False, False),
    "gpt_oss": (moefuse.Activation("gpt_oss", alpha=1.702, limit=7.0), True, True),
    "openai_privacy_filter": (moefuse.Activation("gpt_oss", alpha=1.702, limit=7.0), True, False),
    "minimax_m3_vl": (moefuse.Activation("gpt_oss", alpha=1.702, limit=7.0), False, False),
    "deepseek_v4": (moefuse.Activation("swiglu", limit=10.0), False, False),
    "hy_v4": (moefuse.Activation("swiglu", limit=10.0), False, False),
    "glm5_next": (moefuse.Activation("swiglu", limit=10.0), False, False),
    "gemma4": (moefuse.Activation("gelu_tanh"), False, False),
    "nemotron_h": (moefuse.Activation("relu2"), False, False),
}


@pytest.mark.parametrize("family", sorted(SPECS))
def test_spec(family):
    (experts, *_) = moe_models.experts_modules(moe_models.tiny_model(family))
    assert integration.experts_spec(experts) == integration.ExpertsSpec(*SPECS[family])


def test_an_activation_moefuse_lacks_is_named_with_the_module_class():
    model = moe_models.tiny_model("mixtral", hidden_act="gelu")  # erf GELU: not in moefuse
    with pytest.raises(integration.UnsupportedExperts, match=r"MixtralExperts gates with GELUActivation"):
        logits(model, torch.ones((1, 4), dtype=torch.long), "moefuse")


def test_an_unknown_own_gate_is_named_with_its_class():
    (experts, *_) = moe_models.experts_modules(moe_models.tiny_model("mixtral"))

    class ReluGateExperts(type(experts)):
        def _apply_gate(self, gate_up):
            gate, up = gate_up.chunk(2, dim=-1)
            return torch.relu(gate) * up

    experts.__class__ = ReluGateExperts
    with pytest.raises(integration.UnsupportedExperts, match=r"ReluGateExperts gates with its own .*"):
        integration.experts_spec(experts)


def test_relu2_needs_a_module_without_gate():
    (experts, *_) = moe_models.experts_modules(moe_models.tiny_model("nemotron_h", mlp_hidden_act="silu"))
    with pytest.raises(integration.UnsupportedExperts, match=r"NemotronHExperts has no gate and activation"):
        integration.experts_spec(experts)


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss", "deepseek_v4", "nemotron_h", "gemma4"])
def test_compile_fullgraph_traces_the_operator(family, rng):
    """Dynamo traces experts_forward (the spec included) and the operator's fake implementation
    without a graph break; aot_eager runs the traced graph (no C++ compiler needed)."""
    torch._dynamo.reset()
    model = moe_models.tiny_model(family, seed=int(rng.integers(2**31)))
    ids = torch.from_numpy(rng.integers(1, 128, size=(2, 9)))
    expected = logits(model, ids, "eager")
    model.set_experts_implementation("moefuse")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        got = moe_models.output_of(compiled(input_ids=ids, use_cache=False))
    assert relative(got, expected) < 1e-5


def test_backward_says_inference_only():
    (experts, *_) = moe_models.experts_modules(moe_models.tiny_model("mixtral"))
    x, ids = torch.randn(3, 64, requires_grad=True), torch.zeros((3, 2), dtype=torch.long)
    out = integration.experts_forward(experts, x, ids, torch.full((3, 2), 0.5))
    with pytest.raises(NotImplementedError, match="inference-only"):
        out.sum().backward()


def test_reference_kernel_skips_expert_parallel_sentinels(rng):
    """transformers marks slots of experts on other ranks with the id E_local (weight 0); the
    operator's ids outside [0, E) contribute nothing, as eager's forward skips them."""
    (experts, *_) = moe_models.experts_modules(moe_models.tiny_model("mixtral"))
    x = torch.from_numpy(rng.standard_normal((6, 64)).astype(np.float32))
    ids = torch.from_numpy(rng.integers(0, 8, size=(6, 2)))
    ids[::2, 1] = 8  # the sentinel
    weights = torch.from_numpy(rng.random((6, 2)).astype(np.float32)).masked_fill(ids == 8, 0.0)
    with torch.no_grad():
        got = integration.experts_forward(experts, x, ids, weights)
        # eager's own forward cannot take the sentinel (one_hot over E classes): a weight-0 slot
        expected = experts.forward.__wrapped__(experts, x, ids.masked_fill(ids == 8, 0), weights)
    assert relative(got, expected) < 1e-5
