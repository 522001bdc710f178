"""Finding and launching kernels by their published contracts (moefuse/_spec.py), and the
architecture-neutral launches: top-k routing, the plan, the row gather and the finalize.

Every launch goes to CuPy's current stream. Nothing here synchronises with the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import _cache, _device, _sources, overrides
from ._spec import KernelSpec, SpecError

# Host choices among the plan kernels, measured (docs/DESIGN.md D9): plan_small up to this many
# entries, plan_one_block (at least PLAN_ONE_BLOCK_MIN_THREADS) up to its published limits.
PLAN_SMALL_MAX_ENTRIES = 128
PLAN_ONE_BLOCK_MIN_THREADS = 512
GATHER_MAX_BLOCKS = 4096


def dtype_tag(dtype) -> str:
    """The kernels' tag of an element type: bf16, f16 (or f32 for outputs)."""
    from ._arrays import BFLOAT16, FLOAT16, FLOAT32

    return {BFLOAT16: "bf16", FLOAT16: "f16", FLOAT32: "f32"}[np.dtype(dtype)]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


_selected: dict[tuple, tuple[KernelSpec, ...]] = {}


def select(**tags) -> tuple[KernelSpec, ...]:
    """The current GPU's kernels with these tags (and published numbers), looked up once per
    architecture and kernel sources (every forward launches a few)."""
    arch = _device.device_arch(_device.require_gpu())
    key = (arch, overrides.current().sources, *sorted(tags.items()))
    found = _selected.get(key)
    if found is None:
        catalog = _cache.catalog(arch, _sources.modules_needed(arch, tags))
        found = _selected[key] = tuple(spec for spec in catalog if spec.matches(tags))
    return found


_prepared: set[tuple] = set()


def prepare(*queries: Mapping[str, object]) -> None:
    """Read every module that any of these kernel queries reads on the current GPU, compiling
    what the cache lacks in one parallel pass: the queries that follow compile nothing
    (docs/DESIGN.md D28). Done once per architecture, kernel sources and queries: the
    configuration of every new batch size asks again."""
    arch = _device.device_arch(_device.require_gpu())
    key = (arch, overrides.current().sources, *(tuple(sorted(q.items())) for q in queries))
    if key not in _prepared:
        _cache.catalog(arch, _sources.modules_needed(arch, *queries))
        _prepared.add(key)


def kernel(**tags) -> KernelSpec:
    """The current GPU's one kernel with these tags."""
    found = select(**tags)
    if len(found) != 1:
        names = sorted(spec.name for spec in found)
        raise SpecError(f"{len(found)} kernels match {tags}, want exactly one: {names}")
    return found[0]


_dynamic_smem_limit: dict[object, int] = {}  # per kernel: the limit launch() has set


def launch(spec: KernelSpec, grid: tuple[int, ...], args: Mapping[str, object], threads: int = 0) -> None:
    """Launch `spec` with its published block size (or fewer `threads`) and dynamic shared
    memory, arguments by name; the shared-memory limit is raised first where needed."""
    device_id = _device.require_gpu()
    fn = _cache.load_function(spec, device_id, _device.device_arch(device_id))
    smem = spec.smem_bytes
    if _dynamic_smem_limit.get(fn, 0) < smem:
        from cupy.cuda import driver

        driver.funcSetAttribute(fn.ptr, driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
        _dynamic_smem_limit[fn] = smem
    fn(grid, (threads or spec.threads,), spec.pack(args), shared_mem=smem)


@dataclass(frozen=True)
class Launch:
    """A kernel, its grid and the arguments a forward configuration fixes (sizes, splits,
    guards); the call adds the arrays."""

    spec: KernelSpec
    grid: tuple[int, ...]
    fixed: Mapping[str, object]

    def __call__(self, **arrays) -> None:
        launch(self.spec, self.grid, {**self.fixed, **arrays})


def router(method: str, logits_dtype) -> KernelSpec:
    """The router kernel for `method` reading logits of this dtype."""
    return kernel(op="route", method=method, logits=dtype_tag(logits_dtype))


def route(spec: KernelSpec, logits, k: int, weights, ids, renormalize: bool, **options) -> None:
    """Launch router `spec` over `logits [T, E]` into `weights`, `ids [T, k]`; `options`: the
    kernel's correction_bias, n_group, topk_group and scaling_factor."""
    (num_tokens, num_experts) = logits.shape
    args = dict(options, logits=logits, num_tokens=num_tokens, num_experts=num_experts, k=k)
    args.update(renormalize=int(renormalize), topk_weights=weights, topk_ids=ids)
    launch(spec, (cdiv(num_tokens, spec["tokens_per_block"]),), args)


def build_plan(topk_ids, plan, rank, chunk_count) -> None:
    """Launch the plan kernels into `plan`'s arrays (they fill every entry themselves); `rank` and
    `chunk_count` are scratch. Each kernel takes, by name, the plan's arrays and sizes it declares."""
    ids = "i64" if topk_ids.dtype == np.int64 else "i32"
    pool = dict(vars(plan), topk_ids=topk_ids, n_expanded=topk_ids.size, num_local=plan.num_local_experts)
    pool.update(max_tiles=plan.max_tiles, capacity=plan.capacity, rank=rank, chunk_count=chunk_count)
    arch = _device.device_arch(_device.require_gpu())
    chunks, launches = _plan_launches(
        arch, overrides.current().sources, topk_ids.size, plan.num_local_experts, ids
    )
    pool["num_chunks"] = chunks
    for spec, grid, threads in launches:
        launch(spec, (grid,), spec.take(pool), threads)


@lru_cache(maxsize=256)
def _plan_launches(arch: str, sources, n_expanded: int, num_local: int, ids: str) -> tuple:
    """(chunks, ((kernel, grid, threads), ...)) of the plan launches: one for small batches
    (plan_small, then plan_one_block, within their published limits), else four over `chunks`
    blocks of entries (docs/DESIGN.md D9)."""
    small = kernel(op="plan_small", ids=ids)
    if n_expanded <= min(small["max_entries"], PLAN_SMALL_MAX_ENTRIES):
        return 0, ((small, 1, 0),)
    block = kernel(op="plan_one_block", ids=ids)
    if n_expanded <= block["max_entries"] and num_local <= block["max_experts"]:
        return 0, (
            (block, 1, min(block.threads, max(PLAN_ONE_BLOCK_MIN_THREADS, 32 * cdiv(n_expanded, 32)))),
        )
    rank = kernel(op="plan_rank", ids=ids)
    chunks = cdiv(n_expanded, rank["entries_per_block"])
    return chunks, (
        (rank, chunks, 0),
        (kernel(op="plan_scan_chunks"), num_local, 0),
        (kernel(op="plan_expert_offsets"), 1, 0),
        (kernel(op="plan_scatter", ids=ids), chunks, 0),
    )


def plan_chunks(pairs: int) -> int:
    """Blocks of the multi-kernel plan over `pairs` expanded indices (sizes its scratch)."""
    return cdiv(pairs, kernel(op="plan_rank", ids="i32")["entries_per_block"])


def gather_rows(x, plan, x_perm) -> None:
    """x_perm[p] = x[token(p)] for every routed permuted row p (padding rows untouched)."""
    (num_tokens, hidden), spec = x.shape, kernel(op="gather_rows")
    pool = dict(vars(plan), x=x, x_perm=x_perm, num_tokens=num_tokens, row_bytes=hidden * x.itemsize)
    launch(spec, (min(cdiv(num_tokens, spec["tokens_per_block"]), GATHER_MAX_BLOCKS),), spec.take(pool))


def finalize(y, plan, topk_weights, out) -> None:
    """out[t] = sum_j w[t, j] * y[permuted(t, j)], in slot order, fp32 accumulation."""
    (num_tokens, hidden), tags = out.shape, dict(elem=dtype_tag(y.dtype), out=dtype_tag(out.dtype))
    spec = kernel(op="finalize", **tags)
    pool = dict(vars(plan), y=y, topk_weights=topk_weights, hidden=hidden, out=out)
    launch(spec, (num_tokens,), spec.take(pool))


def quantize_rows(x, group: str, x_q, x_s) -> None:
    """x [T, H] (bf16, fp16) as e4m3 bits `x_q [T, H]` (uint8) and fp32 scales `x_s`, per row and
    per `group`: "128" values (`x_s [T, ceil(H/128)]`) or the whole "row" (`x_s [T, 1]`); H % 16
    == 0. Bit for bit `moefuse.reference.quantize_groups` (docs/DESIGN.md D30)."""
    (num_tokens, hidden), spec = x.shape, kernel(op="quantize_rows", elem=dtype_tag(x.dtype), group=group)
    if x_s.size:
        args = dict(x=x, num_tokens=num_tokens, hidden=hidden, x_q=x_q, x_s=x_s)
        launch(spec, (cdiv(x_s.size, spec["scales_per_block"]),), args)
