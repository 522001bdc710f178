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

from ..activation import Activation
from .torch import UnsupportedExperts, moe_experts

NAME = "moefuse"


@dataclass(frozen=True)
class ExpertsSpec:
    """How moefuse runs one transformers Experts module."""

    activation: Activation
    transposed: bool  # gate_up_proj [E, H, 2I], down_proj [E, I, H]
    interleaved: bool  # gate j and up j at 2j and 2j + 1 of gate_up_proj's 2I axis


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
    return ExpertsSpec(activation, bool(module.is_transposed), module.has_gate and not module.is_concatenated)


def _weights(module) -> tuple:
    """(w1, w2, b1, b2) as the module holds them."""
    w1 = "gate_up_proj" if module.has_gate else "up_proj"
    if not module.has_bias:
        return getattr(module, w1), module.down_proj, None, None
    return getattr(module, w1), module.down_proj, getattr(module, f"{w1}_bias"), module.down_proj_bias


def experts_forward(module, hidden_states, top_k_index, top_k_weights):
    """The "moefuse" experts implementation: `[T, H]` for `hidden_states [T, H]` routed to
    `top_k_index [T, k]` with `top_k_weights [T, k]`."""
    spec = experts_spec(module)
    return moe_experts(
        hidden_states,
        top_k_index,
        top_k_weights,
        *_weights(module),
        activation=spec.activation,
        transposed=spec.transposed,
        interleaved=spec.interleaved,
        owner=type(module).__name__,
    )


def register() -> None:
    """Add "moefuse" to transformers' experts implementations (importing this module does)."""
    ExpertsInterface.register(NAME, experts_forward)


register()

__all__ = [
    "NAME",
    "ExpertsSpec",
    "UnsupportedExperts",
    "experts_forward",
    "experts_spec",
    "register",
]
