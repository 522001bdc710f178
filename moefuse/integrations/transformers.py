"""transformers' experts interface on moefuse: `experts_implementation="moefuse"`.

    import moefuse.integrations.transformers  # registers "moefuse" (as register() does)
    model = AutoModelForCausalLM.from_pretrained(name, experts_implementation="moefuse")
    model.set_experts_implementation("moefuse")  # or switch a model already loaded

transformers 5.x runs every MoE family's experts through its experts interface
(`transformers/integrations/moe.py`): the forward receives the Experts module (its
`gate_up_proj` or `up_proj`, `down_proj`, optional biases and the flags `has_gate`,
`is_transposed`, `is_concatenated`, `has_bias`) with `hidden_states [T, H]`,
`top_k_index [T, k]` and `top_k_weights [T, k]`. `experts_spec` maps a module to moefuse's
activation and weight layout, or raises `UnsupportedExperts` naming the module's class and what
moefuse lacks. docs/INTEGRATIONS.md lists the families.

fp8 checkpoints loaded with `FineGrainedFP8Config` hold their experts in transformers' FP8Experts
(float8_e4m3fn weights with float32 or ue8m0 `*_scale_inv`, `w = q * scale_inv`), which dispatch
through a second interface (`FP8ExpertsInterface`); "moefuse" is registered there too, where the
installed transformers has it. `layer_arguments` tells what moefuse builds from a module.

The forward is the operator of `moefuse.integrations.torch`, so `torch.compile(model,
fullgraph=True)` traces through it and `mode="reduce-overhead"` captures it in a CUDA graph; it
reads the module's parameters in place and keeps a moefuse layer per Experts module (see there).
Inference only: there is no backward.
"""

import math
from dataclasses import dataclass

try:
    import torch
    from transformers import activations
    from transformers.integrations.moe import ExpertsInterface, _default_apply_gate
except ImportError as error:
    raise ImportError(
        "moefuse.integrations.transformers needs PyTorch and transformers 5.x "
        f"(pip install torch transformers): {error}"
    ) from error
try:  # fp8 experts (FineGrainedFP8), where this transformers has them
    from transformers.integrations.finegrained_fp8 import FP8Experts, FP8ExpertsInterface
except ImportError:
    FP8Experts = FP8ExpertsInterface = None

from ..activation import Activation
from ..fp8 import BLOCK
from ..kernels import cdiv
from .torch import UnsupportedExperts, fp8_scales, moe_experts

NAME = "moefuse"


@dataclass(frozen=True)
class ExpertsSpec:
    """How moefuse runs one transformers Experts module."""

    activation: Activation
    transposed: bool  # gate_up_proj [E, H, 2I], down_proj [E, I, H]
    interleaved: bool  # gate j and up j at 2j and 2j + 1 of gate_up_proj's 2I axis
    fp8: bool = False  # float8_e4m3fn weights with their `*_scale_inv` (FP8Experts)


def _activation_kind(act_fn) -> str | None:
    """moefuse's activation kind for a transformers activation function; None where it has none."""
    if act_fn is torch.nn.functional.silu or isinstance(act_fn, (activations.SiLUActivation, torch.nn.SiLU)):
        return "swiglu"
    tanh_gelus = (activations.GELUTanh, activations.NewGELUActivation, activations.FastGELUActivation)
    if isinstance(act_fn, tanh_gelus):
        return "gelu_tanh"
    if isinstance(act_fn, activations.ReLUSquaredActivation):
        return "relu2"
    return None


def _describe(act_fn) -> str:
    return getattr(act_fn, "__name__", type(act_fn).__name__)


def _limit(value) -> float | None:
    """A clamp limit as moefuse takes it: None for none (transformers writes None or inf)."""
    return None if value is None or math.isinf(value) else float(value)


def _gated(module, limit=None) -> Activation:
    """`act_fn(min(gate, limit)) * clamp(up, -limit, limit)` (no clamp without a limit)."""
    kind = _activation_kind(module.act_fn)
    if kind not in ("swiglu", "gelu_tanh"):
        raise UnsupportedExperts(
            f"{type(module).__name__} gates with {_describe(module.act_fn)}; moefuse's gated "
            "activations are silu (SwiGLU) and gelu_pytorch_tanh"
        )
    return Activation(kind, limit=_limit(limit))


def _gpt_oss(alpha, limit) -> Activation:
    return Activation("gpt_oss", alpha=float(alpha), limit=float(limit))


def _fp8_gate(module) -> Activation:
    """FP8Experts' gate on its concatenated halves: with the config's `swiglu_alpha`, gpt-oss's
    clamped gate; else `act_fn(min(gate, limit)) * clamp(up, -limit, limit)` (`swiglu_limit`)."""
    if module.swiglu_alpha is None:
        return _gated(module, module.limit)
    if module.swiglu_limit is None:
        raise UnsupportedExperts(
            f"{type(module).__name__} has swiglu_alpha {module.swiglu_alpha} without a swiglu_limit; "
            "moefuse's gpt_oss activation clamps at a finite limit"
        )
    return _gpt_oss(module.swiglu_alpha, module.swiglu_limit)


# Experts classes with their own `_apply_gate` that moefuse computes, by the class defining it.
_OWN_GATES = {
    # min(gate, limit) * sigmoid(alpha * min(gate, limit)) * (clamp(up, -limit, limit) + 1)
    "GptOssExperts": lambda m: _gpt_oss(m.alpha, m.limit),  # interleaved
    "OpenAIPrivacyFilterExperts": lambda m: _gpt_oss(m.alpha, m.limit),  # concatenated
    "MiniMaxM3VLExperts": lambda m: _gpt_oss(m.swiglu_alpha, m.swiglu_limit),
    # act_fn(min(gate, limit)) * clamp(up, -limit, limit)
    "DeepseekV4Experts": lambda m: _gated(m, m.limit),
    "HYV4Experts": lambda m: Activation("swiglu", limit=_limit(m.swiglu_limit)),  # F.silu
    "Glm5NextTextExperts": lambda m: Activation("swiglu", limit=_limit(m.swiglu_limit)),  # F.silu
    "FP8Experts": _fp8_gate,  # concatenated, whichever family it replaced
}


@torch.compiler.assume_constant_result  # a function's name, which dynamo cannot read
def _gate_owner(gate) -> str:
    """The name of the class defining `gate`."""
    return gate.__qualname__.rpartition(".")[0]


def experts_spec(module) -> ExpertsSpec:
    """moefuse's activation and weight layout for a transformers Experts module, or
    UnsupportedExperts naming the module's class and what moefuse lacks."""
    name = type(module).__name__
    if not hasattr(module, "has_gate"):
        raise UnsupportedExperts(f"{name} does not use transformers' experts interface")
    fp8 = FP8Experts is not None and isinstance(module, FP8Experts) and _fp8_requirements(module)
    gate = type(module)._apply_gate
    if not module.has_gate:
        if _activation_kind(module.act_fn) != "relu2":
            raise UnsupportedExperts(
                f"{name} has no gate and activation {_describe(module.act_fn)}; moefuse's only "
                "activation without a gate is relu2 (relu(up)^2)"
            )
        activation = Activation("relu2")
    elif gate is _default_apply_gate:
        activation = _gated(module)
    else:
        owner = _gate_owner(gate)
        build = _OWN_GATES.get(owner)
        if build is None:
            raise UnsupportedExperts(
                f"{name} gates with its own {owner}._apply_gate, which moefuse does not compute; "
                "moefuse has SwiGLU and GELU-tanh (optionally clamped), gpt-oss's gate and relu2"
            )
        activation = build(module)
    # the flags use_experts_implementation sets (an FP8Experts built without it has its defaults)
    transposed = bool(getattr(module, "is_transposed", False))
    interleaved = module.has_gate and not getattr(module, "is_concatenated", True)
    return ExpertsSpec(activation, transposed, interleaved, fp8)


def _fp8_requirements(module) -> bool:
    """Whether an FP8Experts module holds fp8 weights (False: bf16 or fp16 ones, which its eager
    forward multiplies unscaled), or UnsupportedExperts naming what moefuse cannot run: FP4
    weights, static activation scales, blocks other than 128 x 128, scales neither float32 nor
    ue8m0, biases, no gate, or scales of shapes other than FP8Experts' own."""
    name = type(module).__name__
    w1_name = "gate_up_proj" if module.has_gate else "up_proj"
    w1, w2 = getattr(module, w1_name), module.down_proj
    if getattr(module.config, "expert_dtype", "fp8") == "fp4" or w1.dtype == torch.int8:
        raise UnsupportedExperts(
            f"{name} holds FP4 (e2m1) weights (expert_dtype='fp4'); moefuse's fp8 kernels take "
            "float8_e4m3fn weights only"
        )
    if w1.dtype in (torch.bfloat16, torch.float16) and w2.dtype == w1.dtype:
        return False
    for weight, weight_name in ((w1, w1_name), (w2, "down_proj")):
        if weight.dtype != torch.float8_e4m3fn:
            raise UnsupportedExperts(f"{name}.{weight_name} is {weight.dtype}; moefuse takes float8_e4m3fn")
    if module.activation_scheme != "dynamic":
        raise UnsupportedExperts(
            f"{name} has activation_scheme={module.activation_scheme!r} (static activation scales); "
            "moefuse quantises activations per token as it goes: load with activation_scheme='dynamic'"
        )
    if module.has_bias:
        raise UnsupportedExperts(f"{name} has biases; moefuse's fp8 experts take none from FP8Experts")
    if not module.has_gate:
        raise UnsupportedExperts(
            f"{name} has no gate (up_proj); moefuse's fp8 kernels need gated experts (gate_up_proj)"
        )
    e8m0 = getattr(torch, "float8_e8m0fnu", None)
    block = None if module.block_size is None else tuple(module.block_size)
    if block == (BLOCK, BLOCK):
        expected = tuple((w.shape[0], cdiv(w.shape[1], BLOCK), cdiv(w.shape[2], BLOCK)) for w in (w1, w2))
    elif block is None:  # per tensor: gate and up each their own
        expected = ((w1.shape[0], 2, 1), (w1.shape[0], 1, 1))
    else:
        raise UnsupportedExperts(
            f"{name} has weight_block_size {block}; moefuse's fp8 weights have one scale per "
            f"{BLOCK} x {BLOCK} block (weight_block_size=({BLOCK}, {BLOCK})) or per tensor (None)"
        )
    scales = (module.gate_up_proj_scale_inv, module.down_proj_scale_inv)
    for scale, shape, scale_name in zip(scales, expected, ("gate_up_proj", "down_proj"), strict=True):
        if scale.dtype not in (torch.float32, e8m0):
            raise UnsupportedExperts(
                f"{name}.{scale_name}_scale_inv is {scale.dtype}; moefuse takes float32 or "
                "float8_e8m0fnu (ue8m0) scales"
            )
        if tuple(scale.shape) != shape:
            raise UnsupportedExperts(
                f"{name}.{scale_name}_scale_inv has shape {tuple(scale.shape)}; with weight_block_size "
                f"{block} and {scale_name} {tuple(getattr(module, scale_name).shape)} moefuse takes {shape}"
            )
    return True


def _weights(module) -> tuple:
    """(w1, w2, b1, b2) as the module holds them."""
    w1 = "gate_up_proj" if module.has_gate else "up_proj"
    if not module.has_bias:
        return getattr(module, w1), module.down_proj, None, None
    return getattr(module, w1), module.down_proj, getattr(module, f"{w1}_bias"), module.down_proj_bias


def _scales(module, spec: ExpertsSpec) -> tuple:
    """(w1_scale, w2_scale) as an FP8Experts module holds them; (None, None) without fp8."""
    if not spec.fp8:
        return None, None
    return module.gate_up_proj_scale_inv, module.down_proj_scale_inv


def layer_arguments(module) -> dict:
    """The arguments of the moefuse layer the forward builds for an Experts module (its tensors
    detached, as the forward reads them): `w1, w2, b1, b2, w1_scale, w2_scale` (scales None
    without fp8, else in moefuse's formats: `moefuse.integrations.torch.fp8_scales`),
    `activation`, `transposed`, `interleaved`. UnsupportedExperts where moefuse has no mapping."""
    spec = experts_spec(module)
    w1, w2, b1, b2 = (None if t is None else t.detach() for t in _weights(module))
    s1, s2 = (None if t is None else t.detach() for t in _scales(module, spec))
    if spec.fp8:
        try:
            s1, s2 = fp8_scales(w1, s1, s2)
        except ValueError as error:
            raise UnsupportedExperts(f"{type(module).__name__}: {error}") from error
    return dict(
        w1=w1,
        w2=w2,
        b1=b1,
        b2=b2,
        w1_scale=s1,
        w2_scale=s2,
        activation=spec.activation,
        transposed=spec.transposed,
        interleaved=spec.interleaved,
    )


def experts_forward(module, hidden_states, top_k_index, top_k_weights):
    """The "moefuse" experts implementation: `[T, H]` for `hidden_states [T, H]` routed to
    `top_k_index [T, k]` with `top_k_weights [T, k]`."""
    spec = experts_spec(module)
    w1_scale, w2_scale = _scales(module, spec)
    return moe_experts(
        hidden_states,
        top_k_index,
        top_k_weights,
        *_weights(module),
        activation=spec.activation,
        transposed=spec.transposed,
        interleaved=spec.interleaved,
        owner=type(module).__name__,
        w1_scale=w1_scale,
        w2_scale=w2_scale,
    )


def register() -> None:
    """Add "moefuse" to transformers' experts implementations, and to its fp8 experts' where it
    has them (importing this module does)."""
    ExpertsInterface.register(NAME, experts_forward)
    if FP8ExpertsInterface is not None:
        FP8ExpertsInterface.register(NAME, experts_forward)


register()

__all__ = [
    "NAME",
    "ExpertsSpec",
    "UnsupportedExperts",
    "experts_forward",
    "experts_spec",
    "layer_arguments",
    "register",
]
