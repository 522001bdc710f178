"""Tiny random-weight transformers MoE models, built from configs (nothing downloaded), for the
integration tests: every transformers 5.x family whose Experts module goes through the experts
interface (`use_experts_implementation`). Import only after `pytest.importorskip("transformers")`."""

import importlib

import torch

# Every tiny config gets these, where the config has the field: H and I multiples of 8 (moefuse
# moves rows as 16-byte vectors), 8 experts, top-2, two layers, every layer an MoE one.
COMMON = dict(
    hidden_size=64,
    intermediate_size=64,
    moe_intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=128,
    max_position_embeddings=256,
    num_local_experts=8,
    num_experts=8,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_shared_experts=1,
    first_k_dense_replace=0,
    n_group=2,
    topk_group=1,
    q_lora_rank=32,
    kv_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=16,
    shared_expert_intermediate_size=32,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    moe_layer_freq=1,
    tie_word_embeddings=False,
    pad_token_id=0,
)
_MLA = dict(head_dim=8, num_key_value_heads=4)  # multi-head latent attention: head_dim is the RoPE part
_HYBRID = dict(layer_types=["linear_attention", "full_attention"])  # a KV cache needs one attention layer

# family (transformers.models.<family>) -> what its config needs beyond COMMON
FAMILIES = {
    "afmoe": {},
    "axk1": _MLA,
    "axk2": _MLA,
    "cohere2_moe": {},
    "deepseek_ocr2": dict(mlp_layer_types=["sparse", "sparse"]),
    "deepseek_v2": _MLA,
    "deepseek_v3": _MLA,
    "deepseek_v32": _MLA,
    "deepseek_v4": {},
    "diffusion_gemma": dict(top_k_experts=2),
    "dots1": {},
    "ernie4_5_moe": {},
    "ernie4_5_vl_moe": dict(
        moe_intermediate_size=[32, 32],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [3, 3, 2]},
    ),
    "exaone_moe": {},
    "flex_olmo": {},
    "gemma4": dict(enable_moe_block=True, top_k_experts=2),
    "glm4_moe": {},
    "glm4_moe_lite": {},
    "glm4v_moe": dict(
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 1, 1],
            "partial_rotary_factor": 0.5,
        }
    ),
    "glm5_next": dict(
        num_key_value_heads=4,
        qk_rope_head_dim=0,
        head_dim=8,
        index_head_dim=16,
        index_n_heads=4,
        index_topk=32,
        index_kpool=4,
        mlp_layer_types=["sparse", "sparse"],
        linear_head_dim=16,
        linear_num_heads=4,
    ),
    "glm_moe_dsa": dict(_MLA, index_head_dim=16, index_n_heads=4),
    "gpt_oss": {},
    "granitemoe": {},
    "granitemoe_swa": {},
    "granitemoehybrid": dict(
        _HYBRID, mamba_n_heads=4, mamba_d_state=16, mamba_d_head=32, mamba_chunk_size=16
    ),
    "granitemoeshared": {},
    "hunyuan_v1_moe": {},
    "hy_v3": {},
    "hy_v4": {},
    "inkling": {},
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=1, expert_layer_offset=0),
    "kimi_linear": _HYBRID,
    "laguna": {},
    "lfm2_moe": dict(layer_types=["full_attention", "conv"], num_dense_layers=0),
    "mellum": {},
    "mimo_v2_flash": {},
    "minimax": {},
    "minimax_m2": {},
    "minimax_m3_vl": {},
    "mistral4": {},
    "mixtral": {},
    "nemotron_h": dict(ssm_state_size=16, mamba_num_heads=4, mamba_head_dim=32, n_groups=1, chunk_size=16),
    "olmoe": {},
    "openai_privacy_filter": {},
    "phimoe": {},
    "qwen2_moe": {},
    "qwen3_5_moe": _HYBRID,
    "qwen3_moe": {},
    "qwen3_next": _HYBRID,
    "qwen3_omni_moe": {},
    "qwen3_vl_moe": {},
    "qwen4_exp": {},
    "solar_open": {},
    "zaya": dict(num_experts_per_tok=1),
}
# Not built here: qwen3_omni_moe's talker (its Experts class is the thinker's, which is), step3p7
# (its Experts class does not use the experts interface).
NO_GENERATION = {"qwen4_exp"}  # its sparse attention layers need indexer sizes a tiny config lacks


def model_class(family: str):
    """The family's causal LM class, else its text model (multimodal and encoder families)."""
    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    names = sorted(dir(module))
    causal = [n for n in names if n.endswith("ForCausalLM")]
    text = [n for n in names if n.endswith("TextModel")]
    base = [n for n in names if n.endswith("Model") and "PreTrained" not in n]
    return getattr(module, (causal or text or base)[0])


def generates(family: str) -> bool:
    return family not in NO_GENERATION and model_class(family).__name__.endswith("ForCausalLM")


def tiny_config(family: str, **fields):
    config_class = model_class(family).config_class
    defaults = vars(config_class())  # not hasattr: some configs raise on reading per-layer fields
    known = {k: v for k, v in COMMON.items() if k in defaults or hasattr(config_class, k)}
    return config_class(**{**known, **FAMILIES[family], **fields})


def tiny_model(family: str, *, dtype=torch.float32, device="cpu", seed: int = 0, **fields):
    """The family's two-layer model with random weights of unit-scale outputs (each matrix
    N(0, 1/fan_in), expert biases N(0, 0.1)), so the experts carry the logits; eval mode."""
    torch.manual_seed(seed)
    model = model_class(family)._from_config(tiny_config(family, **fields), experts_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, param.shape[-1] ** -0.5)
            elif name.endswith("proj_bias"):
                param.normal_(0.0, 0.1)
    return model.to(device=device, dtype=dtype).eval()


def experts_modules(model) -> list:
    return [m for m in model.modules() if hasattr(m, "has_gate") and hasattr(m, "down_proj")]


def output_of(result) -> torch.Tensor:
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def reference_experts(
    x,
    ids,
    weights,
    w1,
    w2,
    b1,
    b2,
    kind,
    alpha,
    limit,
    transposed,
    interleaved,
    owner,
    w1_scale=None,
    w2_scale=None,
):
    """moefuse::experts on CPU tensors: moefuse.reference.moe in float64, with the operator's
    arguments. fp8 weights (scales given) are dequantised from the scales in the formats the GPU
    layer is built with (`fp8_scales`), which must pass MoELayer's fp8 checks."""
    import numpy as np

    from moefuse import Activation, _validate, fp8, reference
    from moefuse.integrations.torch import fp8_scales

    activation = Activation(kind, limit=limit, alpha=alpha)
    host = [None if t is None else t.detach().double().numpy() for t in (x, weights, b1, b2)]
    if w1_scale is not None or w2_scale is not None:
        s1, s2 = (s.numpy() for s in fp8_scales(w1.detach(), w1_scale.detach(), w2_scale.detach()))
        q1, q2 = (w.detach().view(torch.uint8).numpy() for w in (w1, w2))
        layout = _validate.WeightLayout.of(activation, transposed, interleaved)
        _validate.check_fp8_weights(q1, q2, s1, s2, layout=layout)
        w1_64, w2_64 = fp8.dequantize_weights(q1, s1, np.float64), fp8.dequantize_weights(q2, s2, np.float64)
    else:
        w1_64, w2_64 = (w.detach().double().numpy() for w in (w1, w2))
    x64, weights64, b1_64, b2_64 = host
    out = reference.moe(
        x64,
        w1_64,
        w2_64,
        weights64,
        ids.numpy(),
        b1_64,
        b2_64,
        activation=activation,
        transposed=transposed,
        interleaved=interleaved,
    )
    return torch.from_numpy(out).to(x.dtype)


def fp8_quantizer(block_size=(128, 128), scale_fmt: str = "float"):
    """transformers' own weight quantiser (`Fp8Quantize`, as FineGrainedFP8 loading runs it) for
    `FineGrainedFP8Config(weight_block_size=block_size, scale_fmt=scale_fmt)`."""
    from types import SimpleNamespace

    from transformers import FineGrainedFP8Config
    from transformers.integrations.finegrained_fp8 import Fp8Quantize

    config = FineGrainedFP8Config(weight_block_size=block_size, scale_fmt=scale_fmt)
    return config, Fp8Quantize(SimpleNamespace(quantization_config=config))


def fill_fp8(module, gate_up, down, block_size=(128, 128), scale_fmt: str = "float") -> None:
    """Quantise `gate_up [E, 2I, H]` and `down [E, H, I]` into an FP8Experts module's parameters
    with transformers' Fp8Quantize: per 128 x 128 block, or (block_size None) per expert matrix
    with gate and up quantised apart (`[E, 2, 1]`), as checkpoints with separate gate and up
    projections load."""
    _, quantize = fp8_quantizer(block_size, scale_fmt)

    def quantized(weight):
        found = quantize._quantize_one("w", weight.detach())
        assert found["w"].dtype == torch.float8_e4m3fn, "Fp8Quantize left the weight unquantised"
        return found["w"], found["w_scale_inv"]

    if block_size is None:
        inter = gate_up.shape[1] // 2
        halves = [quantized(gate_up[:, :inter]), quantized(gate_up[:, inter:])]
        gate_up_q, gate_up_s = (torch.cat(parts, dim=1) for parts in zip(*halves, strict=True))
    else:
        gate_up_q, gate_up_s = quantized(gate_up)
    down_q, down_s = quantized(down)
    with torch.no_grad():
        for name, value in (
            ("gate_up_proj", gate_up_q),
            ("gate_up_proj_scale_inv", gate_up_s),
            ("down_proj", down_q),
            ("down_proj_scale_inv", down_s),
        ):
            param = getattr(module, name)
            assert param.shape == value.shape and param.dtype == value.dtype, (name, param, value)
            param.copy_(value)


def dequantized(module, dtype=torch.float64) -> tuple:
    """(gate_up, down) of an FP8Experts module in `dtype` by transformers' own dequantisation
    (`Fp8Dequantize`, which reads the block size from the scale grid: shapes divisible by it)."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    dequantize = Fp8Dequantize(None)._dequantize_one
    return tuple(
        dequantize(getattr(module, name), getattr(module, f"{name}_scale_inv"), output_dtype=dtype)
        for name in ("gate_up_proj", "down_proj")
    )


def fp8_quantize(model, block_size=(128, 128), scale_fmt: str = "float"):
    """Replace the model's experts in place with transformers' FP8Experts as FineGrainedFP8
    loading makes them (`replace_with_fp8_linear`, every other linear left as it is), quantised from
    the experts' own weights by transformers' Fp8Quantize (`fill_fp8`). Returns a copy of the model
    as it was, with the experts' weights replaced by what the fp8 ones stand for (dequantised by
    transformers, rounded to the model's dtype)."""
    import copy

    from transformers.integrations.finegrained_fp8 import replace_with_fp8_linear

    config, _ = fp8_quantizer(block_size, scale_fmt)
    reference = copy.deepcopy(model)
    originals = {name: m for name, m in model.named_modules() if name.endswith(".experts")}
    linears = [name for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    replace_with_fp8_linear(model, modules_to_not_convert=linears, quantization_config=config)
    for name, original in originals.items():
        module = model.get_submodule(name)
        assert type(module).__name__ == "FP8Experts", f"{name} was not replaced"
        module.to_empty(device=original.gate_up_proj.device)
        fill_fp8(module, original.gate_up_proj.float(), original.down_proj.float(), block_size, scale_fmt)
        gate_up, down = dequantized(module, original.gate_up_proj.dtype)
        target = reference.get_submodule(name)
        with torch.no_grad():
            target.gate_up_proj.copy_(gate_up)
            target.down_proj.copy_(down)
    return reference


def fp8_experts(
    block_size=(128, 128),
    scale_fmt: str = "float",
    *,
    experts: int = 4,
    hidden: int = 256,
    inter: int = 128,
    device="cpu",
    seed: int = 0,
    fill: bool = True,
    has_gate: bool = True,
    activation_scheme: str = "dynamic",
    **config,
):
    """A standalone FP8Experts module (the class as FineGrainedFP8 loading decorates it) with
    `experts` experts of `hidden` x `inter`, its config's `hidden_act` silu unless `config` says
    otherwise (`swiglu_alpha`, `swiglu_limit`, `expert_dtype`...); with `fill`, quantised by
    `fill_fp8` from random weights N(0, 1/fan_in)."""
    from types import SimpleNamespace

    from transformers.integrations.finegrained_fp8 import ALL_FP8_EXPERTS_FUNCTIONS, FP8Experts
    from transformers.integrations.moe import use_experts_implementation

    fields = dict(hidden_size=hidden, num_experts=experts, moe_intermediate_size=inter, hidden_act="silu")
    fields.update(_experts_implementation="moefuse", **config)
    experts_class = use_experts_implementation(
        FP8Experts, experts_interface=ALL_FP8_EXPERTS_FUNCTIONS, has_gate=has_gate
    )
    module = experts_class(
        SimpleNamespace(**fields),
        block_size=block_size,
        activation_scheme=activation_scheme,
        scale_fmt=scale_fmt,
        has_gate=has_gate,
    ).to(device)
    if fill:
        generator = torch.Generator().manual_seed(seed)
        gate_up = torch.randn(experts, 2 * inter, hidden, generator=generator) / hidden**0.5
        down = torch.randn(experts, hidden, inter, generator=generator) / inter**0.5
        fill_fp8(module, gate_up.to(device), down.to(device), block_size, scale_fmt)
    return module


def fp8_experts_reference(module, x, ids, weights) -> torch.Tensor:
    """An FP8Experts module's output in float64, by transformers' own arithmetic on transformers'
    own dequantised weights (`dequantized`): `sum_j weights[t, j] * down[e] @ _apply_gate(gate_up[e]
    @ x[t])` with the module's `_apply_gate`; activations unquantised."""
    gate_up, down = dequantized(module)
    x, weights = x.double(), weights.double()
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for e in range(gate_up.shape[0]):
            token, slot = (ids == e).nonzero(as_tuple=True)
            h = module._apply_gate(x[token] @ gate_up[e].T)
            out.index_add_(0, token, (h @ down[e].T) * weights[token, slot, None])
    return out
