"""moefuse: fused Mixture-of-Experts expert layers on NVIDIA GPUs, from Python, on CuPy arrays.

    weights, ids = moefuse.route(router_logits, k=2)
    out = moefuse.fused_moe(x, w1, w2, weights, ids)

Importing needs no GPU; every GPU function raises `NoGPUError` when there is none.
"""

from . import backends
from ._cache import CacheWarning
from ._device import NoGPUError, gpu_name
from ._nvrtc import CompileError
from .activation import Activation
from .layer import MoELayer
from .ops import fused_moe, grouped_gemm, plan, route, workspace_bytes
from .overrides import override
from .plan import RoutingPlan, plan_capacity

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "CacheWarning",
    "CompileError",
    "MoELayer",
    "NoGPUError",
    "RoutingPlan",
    "backends",
    "fused_moe",
    "gpu_name",
    "grouped_gemm",
    "override",
    "plan",
    "plan_capacity",
    "route",
    "workspace_bytes",
]
