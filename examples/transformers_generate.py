"""A transformers MoE model switched to moefuse, generating greedily beside transformers' eager
experts. The model is a small Mixtral (or Qwen3-MoE) with random weights built from its config,
so nothing is downloaded; a real checkpoint switches the same way:

    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.bfloat16,
                                                 experts_implementation="moefuse")

    python examples/transformers_generate.py [--family mixtral|qwen3_moe]
"""

import argparse

import torch
from transformers import MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

import moefuse.integrations.transformers  # noqa: F401  (registers experts_implementation="moefuse")

SHAPE = dict(
    vocab_size=512, hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4
)
MODELS = {
    "mixtral": (MixtralForCausalLM, MixtralConfig(**SHAPE, intermediate_size=512, num_local_experts=8)),
    "qwen3_moe": (
        Qwen3MoeForCausalLM,
        Qwen3MoeConfig(**SHAPE, moe_intermediate_size=256, num_experts=16, num_experts_per_tok=4),
    ),
}


def random_model(family: str):
    """Random weights of unit-scale outputs (the default init's are too small for the experts to
    matter), bf16 on the GPU."""
    model_class, config = MODELS[family]
    torch.manual_seed(0)
    model = model_class(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.normal_(0.0, param.shape[-1] ** -0.5)
    return model.to("cuda", torch.bfloat16).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(MODELS), default="mixtral")
    args = parser.parse_args()
    model = random_model(args.family)
    prompts = torch.randint(1, model.config.vocab_size, (4, 8), device="cuda")
    generated = {}
    for implementation in ("eager", "moefuse"):
        model.set_experts_implementation(implementation)
        with torch.no_grad():
            out = model.generate(
                input_ids=prompts,
                attention_mask=torch.ones_like(prompts),
                max_new_tokens=12,
                do_sample=False,
                pad_token_id=0,
            )
        generated[implementation] = out[:, prompts.shape[1] :]
        print(f"{implementation:8s}", generated[implementation].tolist())
    same = int((generated["moefuse"] == generated["eager"]).sum())
    print(f"moefuse generated the same token as eager at {same} of {generated['eager'].numel()} positions")


if __name__ == "__main__":
    main()
