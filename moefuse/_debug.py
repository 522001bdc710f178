"""`MOEFUSE_DEBUG=1`: the argument checks that need the values, and so a host sync.

Without it, an id outside `[0, num_experts)` counts as routed elsewhere (ids < 0 mark dropped
pairs by design) and a NaN weight poisons only its own token's row; with it, the first id at or
above num_experts, or the first weight that is not finite, raises ValueError naming its position.
The checks wait for the GPU, so they are skipped, with a warning, under CUDA graph capture."""

from __future__ import annotations

import os
import warnings

DEBUG_ENV = "MOEFUSE_DEBUG"


def enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def _first(mask) -> tuple[int, ...] | None:
    import cupy

    flat = cupy.flatnonzero(mask.ravel())
    if flat.size == 0:
        return None
    return tuple(int(i) for i in cupy.unravel_index(flat[0], mask.shape))


def _skipped_under_capture(capturing: bool) -> bool:
    if capturing:
        warnings.warn(f"{DEBUG_ENV}: the checks need a host sync; skipped under graph capture", stacklevel=4)
    return capturing


def check_ids(topk_ids, num_experts: int, capturing: bool) -> None:
    if _skipped_under_capture(capturing):
        return
    where = _first(topk_ids >= num_experts)
    if where is not None:
        raise ValueError(
            f"{DEBUG_ENV}: topk_ids{list(where)} = {int(topk_ids[where])} is not an expert id "
            f"(num_experts = {num_experts}; ids < 0 mark dropped pairs)"
        )


def check_weights(topk_weights, capturing: bool) -> None:
    import cupy

    if _skipped_under_capture(capturing):
        return
    where = _first(~cupy.isfinite(topk_weights))
    if where is not None:
        value = float(topk_weights[where])
        raise ValueError(f"{DEBUG_ENV}: topk_weights{list(where)} = {value} is not finite")
