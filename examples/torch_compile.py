"""A PyTorch module whose experts run on moefuse, compiled with torch.compile(fullgraph=True):
the operator `moefuse::experts` traces as one node, with no graph break.

    python examples/torch_compile.py
"""

import torch

from moefuse.integrations.torch import moe_experts


class SparseMoE(torch.nn.Module):
    """Router (softmax top-k, in torch) and SwiGLU experts (moefuse)."""

    def __init__(self, hidden: int, inter: int, experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.router = torch.nn.Linear(hidden, experts, bias=False)
        self.w1 = torch.nn.Parameter(torch.randn(experts, 2 * inter, hidden) * hidden**-0.5)
        self.w2 = torch.nn.Parameter(torch.randn(experts, hidden, inter) * inter**-0.5)

    def route(self, x):
        weights, ids = torch.topk(self.router(x).float().softmax(-1), self.top_k, dim=-1)
        return ids, weights / weights.sum(-1, keepdim=True)

    def forward(self, x):
        return moe_experts(x, *self.route(x), self.w1, self.w2)

    def forward_in_torch(self, x):
        """The same layer in plain torch, in float32."""
        ids, weights = self.route(x)
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for expert, (w1, w2) in enumerate(zip(self.w1.float(), self.w2.float(), strict=True)):
            tokens, slots = (ids == expert).nonzero(as_tuple=True)
            gate, up = (x[tokens].float() @ w1.T).chunk(2, dim=-1)
            y = (torch.nn.functional.silu(gate) * up) @ w2.T
            out.index_add_(0, tokens, y * weights[tokens, slots, None])
        return out


def main() -> None:
    torch.manual_seed(0)
    layer = SparseMoE(hidden=512, inter=256, experts=8, top_k=2).to("cuda", torch.bfloat16).eval()
    compiled = torch.compile(layer, fullgraph=True)
    for tokens in (64, 64, 200):
        x = torch.randn(tokens, 512, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            out, expected = compiled(x), layer.forward_in_torch(x)
        error = ((out.float() - expected).norm() / expected.norm()).item()
        print(f"T={tokens}: compiled moefuse layer vs torch, relative error {error:.1e}")
        assert error < 2e-2


if __name__ == "__main__":
    main()
