"""The activations GEMM1's epilogue applies (cuda_src/common/activation.cuh).

Every gated form is one formula with four parameters, passed to the kernel at run time (a new
gated activation costs no kernel instantiation):

    g = min(gate, limit),  u = clamp(up, -limit, limit)
    out = g * sigmoid(alpha * g * (1 + cubic * g^2)) * (u + beta)

The not-gated `relu2` is relu(up)^2 with w1 holding only the I up rows.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

GELU_TANH_ALPHA = 2.0 * math.sqrt(2.0 / math.pi)  # gelu_tanh(g) = g * sigmoid(2 sqrt(2/pi) (g + c g^3))
GELU_TANH_CUBIC = 0.044715
GPT_OSS_ALPHA, GPT_OSS_LIMIT = 1.702, 7.0  # gpt-oss's defaults (its config may say otherwise)

# gated kind -> (alpha, cubic, beta, default limit); relu2, not gated, has none.
_GATED = {
    "swiglu": (1.0, 0.0, 0.0, math.inf),
    "gpt_oss": (GPT_OSS_ALPHA, 0.0, 1.0, GPT_OSS_LIMIT),
    "gelu_tanh": (GELU_TANH_ALPHA, GELU_TANH_CUBIC, 0.0, math.inf),
}
KINDS = (*_GATED, "relu2")


@dataclass(frozen=True)
class Activation:
    """An expert activation: `kind` (swiglu, gpt_oss, gelu_tanh, or the not-gated relu2), with an
    optional clamp `limit` (gated kinds; gpt_oss defaults to 7.0) and gpt_oss's `alpha` (1.702).

    swiglu: silu(g) * u; with `limit`, silu(min(g, limit)) * clamp(u, -limit, limit) (DeepSeek-V4,
    GLM-5, HunYuan-V4). gpt_oss: g * sigmoid(alpha g) * (u + 1) on the clamped values.
    gelu_tanh: gelu_tanh(g) * u (Gemma 4). relu2: relu(u)^2 (Nemotron-H)."""

    kind: str = "swiglu"
    limit: float | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"activation kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "relu2" and self.limit is not None:
            raise ValueError("activation relu2 takes no limit")
        if self.alpha is not None and self.kind != "gpt_oss":
            raise ValueError(f"activation alpha is gpt_oss's parameter; {self.kind} takes none")
        for value, name in ((self.limit, "limit"), (self.alpha, "alpha")):
            number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            if value is not None and not (number and math.isfinite(value) and value > 0):
                raise ValueError(f"activation {name} must be a finite number > 0, got {value!r}")

    @property
    def gated(self) -> bool:
        return self.kind != "relu2"

    def kernel_args(self) -> dict[str, float]:
        """The gated kernels' act_* arguments."""
        alpha, cubic, beta, limit = _GATED[self.kind]
        alpha = alpha if self.alpha is None else float(self.alpha)
        limit = limit if self.limit is None else float(self.limit)
        return dict(act_alpha=alpha, act_cubic=cubic, act_beta=beta, act_limit=limit)

    def reference(self, gate, up) -> np.ndarray:
        """The activation in float64 (gate is ignored by relu2)."""
        up = np.asarray(up, dtype=np.float64)
        if not self.gated:
            return np.maximum(up, 0.0) ** 2
        p = self.kernel_args()
        g = np.minimum(np.asarray(gate, dtype=np.float64), p["act_limit"])
        u = np.clip(up, -p["act_limit"], p["act_limit"])
        z = p["act_alpha"] * g * (1.0 + p["act_cubic"] * g * g)
        return g * 0.5 * (1.0 + np.tanh(0.5 * z)) * (u + p["act_beta"])  # sigmoid, overflow-free


def as_activation(activation) -> Activation:
    """An Activation from itself or its kind's name."""
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        return Activation(activation)
    raise TypeError(f"activation must be a str or moefuse.Activation, got {type(activation).__name__}")
