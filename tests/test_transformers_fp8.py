"""moefuse for transformers' fp8 experts without a GPU: FineGrainedFP8 replaces a model's Experts
modules with FP8Experts (float8_e4m3fn weights, `*_scale_inv` float32 or ue8m0 scales, `w = q *
scale_inv`), dispatched through a second interface, where "moefuse" must be registered too. Checked
here: the mapping of an FP8Experts module to the moefuse layer's arguments (formats, per-half
scales expanded to blocks, ue8m0 widened, activations), end to end on CPU with the operator's
kernel replaced by moefuse's float64 reference built from the mapped fp8 operands (which must pass
MoELayer's fp8 checks) against transformers' own quantiser and dequantiser, and the errors for what
moefuse cannot run. Skipped where torch or transformers (with its fp8 experts) is not installed
(CI); test_gpu_transformers_fp8.py runs the kernels."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("transformers.integrations.finegrained_fp8")

import moe_models  # noqa: E402
from transformers.integrations.finegrained_fp8 import ALL_FP8_EXPERTS_FUNCTIONS  # noqa: E402

import moefuse  # noqa: E402
from moefuse import _validate  # noqa: E402
from moefuse.integrations import torch as moefuse_torch  # noqa: E402
from moefuse.integrations import transformers as integration  # noqa: E402

# (weight_block_size, scale_fmt) of FineGrainedFP8Config: blocks with float32 or ue8m0 scales, and
# per tensor (gate and up quantised apart: scales [E, 2, 1] and [E, 1, 1])
FORMATS = [((128, 128), "float"), ((128, 128), "ue8m0"), (None, "float")]
FORMAT_IDS = ["block", "block-ue8m0", "tensor"]
FP8_SIZES = {  # family -> fields: H and I multiples of 128 (per-tensor scales become blocks)
    "qwen3_moe": dict(hidden_size=256, moe_intermediate_size=128),
    "mixtral": dict(hidden_size=256, intermediate_size=128),
}


@pytest.fixture(scope="module", autouse=True)
def reference_kernel():
    moefuse_torch.experts.register_kernel("cpu")(moe_models.reference_experts)


def relative(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_importing_registers_moefuse_for_fp8_experts():
    assert ALL_FP8_EXPERTS_FUNCTIONS["moefuse"] is integration.experts_forward
    integration.register()  # again: still the one entry
    assert list(ALL_FP8_EXPERTS_FUNCTIONS).count("moefuse") == 1


@pytest.mark.parametrize("family", sorted(FP8_SIZES))
@pytest.mark.parametrize(("block_size", "scale_fmt"), FORMATS, ids=FORMAT_IDS)
def test_an_fp8_model_computes_what_its_weights_stand_for(family, block_size, scale_fmt, rng):
    """A tiny model whose experts transformers' FineGrainedFP8 replaced and quantised, run under
    "moefuse" (the reference kernel: float64 from the fp8 operands as mapped), gives the logits of
    the same model with transformers' dequantisation of those weights under eager, to fp32 rounding:
    a wrong scale convention, block, half or gate shows far above."""
    model = moe_models.tiny_model(family, seed=int(rng.integers(2**31)), **FP8_SIZES[family])
    dequantized = moe_models.fp8_quantize(model, block_size, scale_fmt)
    assert all(type(m).__name__ == "FP8Experts" for m in moe_models.experts_modules(model))
    ids = torch.from_numpy(rng.integers(1, 128, size=(2, 9)))
    model.set_experts_implementation("moefuse")
    with torch.no_grad():
        got = moe_models.output_of(model(input_ids=ids, use_cache=False))
        expected = moe_models.output_of(dequantized(input_ids=ids, use_cache=False))
    assert relative(got, expected) < 1e-5


def fp8_check(arguments) -> _validate.Fp8Dims:
    """MoELayer's fp8 checks on the mapped arguments (as numpy arrays: no GPU needed)."""
    w1, w2 = (arguments[name].view(torch.uint8).numpy() for name in ("w1", "w2"))
    s1, s2 = (arguments[name].numpy() for name in ("w1_scale", "w2_scale"))
    layout = _validate.WeightLayout.of(
        arguments["activation"], arguments["transposed"], arguments["interleaved"]
    )
    return _validate.check_fp8_weights(w1, w2, s1, s2, layout=layout)


def test_block_scales_are_read_in_place():
    module = moe_models.fp8_experts((128, 128), experts=4, hidden=384, inter=256)
    arguments = integration.layer_arguments(module)
    assert arguments["w1"].dtype == torch.float8_e4m3fn and arguments["w1"].shape == (4, 512, 384)
    assert arguments["w1_scale"].shape == (4, 4, 3) and arguments["w2_scale"].shape == (4, 3, 2)
    assert arguments["w1_scale"].data_ptr() == module.gate_up_proj_scale_inv.data_ptr()  # no copy
    assert arguments["w2_scale"].data_ptr() == module.down_proj_scale_inv.data_ptr()
    assert (arguments["b1"], arguments["b2"]) == (None, None)
    assert fp8_check(arguments).format == moefuse.fp8.Fp8Format("block")


def test_ue8m0_scales_are_widened_exactly():
    module = moe_models.fp8_experts((128, 128), "ue8m0")
    arguments = integration.layer_arguments(module)
    for scale, held in (
        (arguments["w1_scale"], module.gate_up_proj_scale_inv),
        (arguments["w2_scale"], module.down_proj_scale_inv),
    ):
        assert held.dtype == torch.float8_e8m0fnu and scale.dtype == torch.float32
        exponents = held.view(torch.uint8).to(torch.float64) - 127  # e8m0: 2^(bits - 127)
        assert torch.equal(scale.double(), torch.exp2(exponents))
    assert fp8_check(arguments).format == moefuse.fp8.Fp8Format("block")


def test_per_half_scales_become_blocks():
    """Per tensor, FP8Experts holds one scale for the gate rows and one for the up rows of each
    expert ([E, 2, 1]): with I % 128 == 0 each 128-row block lies in one half, so they are blocks,
    and w2's per-tensor scale is repeated over its blocks (moefuse takes one format for both)."""
    module = moe_models.fp8_experts(None, experts=3, hidden=384, inter=256)
    half, down = module.gate_up_proj_scale_inv, module.down_proj_scale_inv
    assert half.shape == (3, 2, 1) and down.shape == (3, 1, 1)
    assert not torch.equal(half[:, 0], half[:, 1])
    arguments = integration.layer_arguments(module)
    w1_scale, w2_scale = arguments["w1_scale"], arguments["w2_scale"]
    assert w1_scale.shape == (3, 4, 3) and w2_scale.shape == (3, 3, 2)
    assert torch.equal(w1_scale[:, :2], half[:, :1].expand(-1, 2, 3))  # gate rows 0..255
    assert torch.equal(w1_scale[:, 2:], half[:, 1:].expand(-1, 2, 3))  # up rows 256..511
    assert torch.equal(w2_scale, down.expand(-1, 3, 2))
    assert fp8_check(arguments).format == moefuse.fp8.Fp8Format("block")


@pytest.mark.parametrize(("hidden", "inter"), [(256, 192), (128, 128)])
def test_per_half_scales_without_whole_blocks(hidden, inter):
    """I % 128 != 0 puts gate and up rows in one block, and w2 within one block reads as one scale
    per matrix: only halves with equal scales map (to one per matrix); others are refused."""
    module = moe_models.fp8_experts(None, hidden=hidden, inter=inter)
    with pytest.raises(
        integration.UnsupportedExperts, match=r"FP8Experts: .*different scales for the gate and up"
    ):
        integration.layer_arguments(module)
    with torch.no_grad():
        module.gate_up_proj_scale_inv[:, 1] = module.gate_up_proj_scale_inv[:, 0]
    arguments = integration.layer_arguments(module)
    assert arguments["w1_scale"].shape == (4,) and arguments["w2_scale"].shape == (4, 1, 1)
    assert torch.equal(arguments["w1_scale"], module.gate_up_proj_scale_inv[:, 0, 0])
    assert fp8_check(arguments).format == moefuse.fp8.Fp8Format("tensor")


GATES = {  # config fields -> moefuse's activation (FP8Experts._apply_gate's three forms)
    "silu": ({}, moefuse.Activation("swiglu")),
    "limit": (dict(swiglu_limit=7.0), moefuse.Activation("swiglu", limit=7.0)),
    "gpt_oss": (
        dict(swiglu_alpha=1.702, swiglu_limit=7.0),
        moefuse.Activation("gpt_oss", alpha=1.702, limit=7.0),
    ),
    "gelu_tanh": (dict(hidden_act="gelu_pytorch_tanh"), moefuse.Activation("gelu_tanh")),
}


@pytest.mark.parametrize("gate", sorted(GATES))
def test_fp8_gates_map_to_what_apply_gate_computes(gate, rng):
    """The spec of each form of FP8Experts' own gate, and the forward (reference kernel) against
    the module's `_apply_gate` on transformers' dequantised weights in float64. Gates are scaled
    up so that the clamps bite."""
    fields, activation = GATES[gate]
    module = moe_models.fp8_experts((128, 128), **fields)
    assert integration.experts_spec(module) == integration.ExpertsSpec(activation, False, False, fp8=True)
    x = torch.from_numpy(8.0 * rng.standard_normal((16, 256)).astype(np.float32))
    ids = torch.from_numpy(np.stack([rng.permutation(4)[:2] for _ in range(16)]))
    weights = torch.from_numpy(rng.random((16, 2)).astype(np.float32))
    with torch.no_grad():
        got = integration.experts_forward(module, x, ids, weights)
    assert relative(got, moe_models.fp8_experts_reference(module, x, ids, weights)) < 1e-5


def test_bf16_weights_in_fp8_experts_run_unscaled():
    """FP8Experts with 16-bit weights (its eager forward multiplies them unscaled) is no fp8 layer."""
    module = moe_models.fp8_experts((128, 128), fill=False)
    module.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 256, 256, dtype=torch.bfloat16))
    module.down_proj = torch.nn.Parameter(torch.zeros(4, 256, 128, dtype=torch.bfloat16))
    assert not integration.experts_spec(module).fp8
    arguments = integration.layer_arguments(module)
    assert (arguments["w1_scale"], arguments["w2_scale"]) == (None, None)


def _static(module):
    module.activation_scheme = "static"


def _bias(module):
    module.has_bias = True  # FP8Experts' constructor refuses biases; a subclass might not


def _bf16_scale(module):
    module.gate_up_proj_scale_inv = torch.nn.Parameter(module.gate_up_proj_scale_inv.bfloat16())


UNSUPPORTED = {  # what moefuse cannot run -> (module arguments, change, the error's words)
    "blocks of 64": (dict(block_size=(64, 64)), None, r"weight_block_size \(64, 64\); .*128 x 128"),
    "blocks of 1 x 128": (dict(block_size=(1, 128)), None, r"weight_block_size \(1, 128\)"),
    "static activations": ({}, _static, r"activation_scheme='static' .*'dynamic'"),
    "fp4": (dict(expert_dtype="fp4"), None, r"FP4 \(e2m1\) weights"),
    "no gate": (dict(has_gate=False, hidden_act="relu2"), None, r"no gate \(up_proj\)"),
    "biases": ({}, _bias, r"has biases"),
    "bf16 scales": ({}, _bf16_scale, r"gate_up_proj_scale_inv is torch.bfloat16; .*float32"),
    # I = 64: FP8Experts floors the gate_up scales at two rows ([E, 2, 2]); moefuse's blocks are [E, 1, 2]
    "floored scale rows": (dict(inter=64), None, r"gate_up_proj_scale_inv has shape \(4, 2, 2\)"),
    "gelu": (dict(hidden_act="gelu"), None, r"FP8Experts gates with GELUActivation"),
    "alpha without limit": (dict(swiglu_alpha=1.702), None, r"swiglu_alpha 1.702 without a swiglu_limit"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_what_moefuse_cannot_run_is_named(case):
    arguments, change, words = UNSUPPORTED[case]
    arguments = {"block_size": (128, 128), **arguments}
    module = moe_models.fp8_experts(arguments.pop("block_size"), fill=False, **arguments)
    if change is not None:
        change(module)
    with pytest.raises(integration.UnsupportedExperts, match=words):
        integration.experts_spec(module)
    x, ids = torch.zeros((2, 256)), torch.zeros((2, 2), dtype=torch.long)
    with pytest.raises(integration.UnsupportedExperts, match=words), torch.no_grad():
        module(x, ids, torch.full((2, 2), 0.5))  # the forward, dispatched to "moefuse", says the same


def test_compile_fullgraph_traces_fp8_experts(rng):
    """Dynamo traces the fp8 spec and the operator with its scales without a graph break."""
    torch._dynamo.reset()
    model = moe_models.tiny_model("qwen3_moe", seed=int(rng.integers(2**31)), **FP8_SIZES["qwen3_moe"])
    moe_models.fp8_quantize(model, None)
    ids = torch.from_numpy(rng.integers(1, 128, size=(2, 9)))
    model.set_experts_implementation("moefuse")
    with torch.no_grad():
        expected = moe_models.output_of(model(input_ids=ids, use_cache=False))
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        got = moe_models.output_of(compiled(input_ids=ids, use_cache=False))
    assert relative(got, expected) < 1e-6
