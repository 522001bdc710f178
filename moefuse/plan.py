"""The routing plan: which permuted row each (token, slot) pair lands in, built on the device.

Terms. The *expanded* index of pair (token t, slot j) is `t * k + j`. *Permuted* rows group the
pairs routed to this layer's local experts by expert, in ascending expanded index inside each
expert; each expert's segment starts at a multiple of `tile_m`, so every M tile of a grouped GEMM
belongs to one expert.

Invariants of a RoutingPlan (the GPU tests check them on host copies, against `reference.plan`):
  * expert_counts[e] = number of pairs routed to local expert e (global id first_expert + e).
  * expert_offsets[0] = 0, expert_offsets[e+1] = expert_offsets[e] + roundup(expert_counts[e], tile_m);
    expert_offsets[E_local] <= capacity.
  * permuted_to_expanded[expert_offsets[e] + r] for r < expert_counts[e] is the r-th smallest
    expanded index routed to e; every other entry is -1 (padding).
  * expanded_to_permuted is its inverse on routed pairs and -1 for pairs routed elsewhere
    (ids < 0, or outside [first_expert, first_expert + E_local)).
  * tile_expert[i] = e for the tiles of e's segment (rows [i*tile_m, (i+1)*tile_m)), -1 after.
Buffer sizes depend only on (T, k, E_local, tile_m), never on the routing, so building a plan
never waits for the host and can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels
from .workspace import ArraySpec

INT32 = np.dtype(np.int32)
# The plan's device arrays (the kernels read them; RoutingPlan's fields of the same names).
PLAN_ARRAYS = (
    "expert_counts",
    "expert_offsets",
    "permuted_to_expanded",
    "expanded_to_permuted",
    "tile_expert",
)


@dataclass(frozen=True)
class PlanCapacity:
    rows: int  # permuted rows, padding included: the M extent of the grouped GEMMs
    tiles: int  # M tiles of tile_m rows


def plan_capacity(num_tokens: int, top_k: int, num_local_experts: int, tile_m: int) -> PlanCapacity:
    """Most rows and tiles any routing of `num_tokens * top_k` pairs onto the local experts needs.

    At most min(E_local, T*k) experts are hit, and sum_e ceil(c_e / m) <= (T*k + hit*(m-1)) / m."""
    pairs = num_tokens * top_k
    tiles = (pairs + min(num_local_experts, pairs) * (tile_m - 1)) // tile_m
    return PlanCapacity(rows=tiles * tile_m, tiles=tiles)


@dataclass(frozen=True)
class RoutingPlan:
    num_tokens: int
    top_k: int
    num_experts: int
    first_expert: int
    num_local_experts: int
    tile_m: int
    expert_counts: object  # cupy int32 [E_local]
    expert_offsets: object  # cupy int32 [E_local + 1]
    permuted_to_expanded: object  # cupy int32 [capacity]
    expanded_to_permuted: object  # cupy int32 [T * k]
    tile_expert: object  # cupy int32 [max_tiles]

    @property
    def capacity(self) -> int:
        return self.permuted_to_expanded.shape[0]

    @property
    def max_tiles(self) -> int:
        return self.tile_expert.shape[0]


def plan_specs(num_tokens: int, top_k: int, num_local_experts: int, tile_m: int) -> list[ArraySpec]:
    """Plan arrays, then the scratch of the multi-chunk plan kernels."""
    cap = plan_capacity(num_tokens, top_k, num_local_experts, tile_m)
    pairs = num_tokens * top_k
    return [
        ArraySpec("expert_counts", (num_local_experts,), INT32),
        ArraySpec("expert_offsets", (num_local_experts + 1,), INT32),
        ArraySpec("expanded_to_permuted", (pairs,), INT32),
        ArraySpec("tile_expert", (cap.tiles,), INT32),
        ArraySpec("permuted_to_expanded", (cap.rows,), INT32),
        ArraySpec("rank", (pairs,), INT32),
        ArraySpec("chunk_count", (num_local_experts * kernels.plan_chunks(pairs),), INT32),
    ]


def plan_from_arrays(
    num_tokens: int,
    top_k: int,
    num_experts: int,
    first_expert: int,
    num_local_experts: int,
    tile_m: int,
    arrays,
) -> RoutingPlan:
    """The RoutingPlan over arrays carved from `plan_specs` (filled by `launch_plan`)."""
    views = {name: view for name, view in arrays.items() if name in RoutingPlan.__dataclass_fields__}
    return RoutingPlan(num_tokens, top_k, num_experts, first_expert, num_local_experts, tile_m, **views)


def launch_plan(topk_ids, plan: RoutingPlan, arrays) -> None:
    """Launch the plan kernels, which write every entry of the plan's arrays (no host sync)."""
    if topk_ids.size:
        kernels.build_plan(topk_ids, plan, arrays["rank"], arrays["chunk_count"])
        return
    import cupy

    from ._device import stream_ptr

    for counts in (plan.expert_counts, plan.expert_offsets):  # an empty batch: nothing routed
        cupy.cuda.runtime.memsetAsync(counts.data.ptr, 0, counts.nbytes, stream_ptr())
