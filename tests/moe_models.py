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
