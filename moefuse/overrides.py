"""The one way to steer the kernel choice: `with moefuse.override(...)`.

The heuristics choose a forward configuration per call kind (moefuse/backends.py); tests, tools and
the benchmark force a backend, a Hopper kernel family, a tile or a kernel source through this
context manager instead of patching the library. Overrides nest (inner fields win) and are local
to the thread or task that set them (a ContextVar).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

FAMILIES = ("rows", "swapped", "wide")
BACKENDS = ("sm80", "sm90")


@dataclass(frozen=True)
class Overrides:
    """None everywhere: the heuristics decide."""

    backend: str | None = None  # sm80 (portable mma.sync) or sm90 (Hopper)
    family: str | None = None  # Hopper: rows, swapped (narrow tiles) or wide (swapped, wide tiles)
    tile_m: int | None = None  # the row-major M tile, and the plan's padding unit
    tile_n: int | None = None  # the Hopper row-major kernels' BN
    busiest_limit: int | None = None  # family "wide": wide tiles only while no expert has more rows
    sources: tuple[tuple[str, str], ...] = ()  # (module, source path under cuda_src) to load instead

    def source(self, module: str) -> str | None:
        return dict(self.sources).get(module) if self.sources else None


_NONE = Overrides()
_CURRENT: ContextVar[Overrides] = ContextVar("moefuse_overrides", default=_NONE)


def current() -> Overrides:
    return _CURRENT.get()


def _check(backend, family, busiest_limit) -> None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} or None, got {family!r}")
    if busiest_limit is not None and family != "wide":
        raise ValueError("busiest_limit guards the wide swapped tiles: pass it with family='wide'")
    if busiest_limit is not None and (isinstance(busiest_limit, bool) or not busiest_limit >= 1):
        raise ValueError(f"busiest_limit must be a positive number of rows, got {busiest_limit!r}")


@contextmanager
def override(
    *,
    backend: str | None = None,
    family: str | None = None,
    tile_m: int | None = None,
    tile_n: int | None = None,
    busiest_limit: int | None = None,
    sources: Mapping[str, str] | None = None,
) -> Iterator[Overrides]:
    """Force parts of the kernel choice inside the block. Fields left None keep the enclosing
    choice, except `busiest_limit`, which belongs to the family it is given with: a new family
    without one runs unguarded. Sources add to the enclosing ones. A forced tile or family the
    kernels do not have raises when a call configures; the portable (sm80) backend has one
    family and one BN, so `family` and `tile_n` do not apply to it."""
    _check(backend, family, busiest_limit)
    given = {"backend": backend, "family": family, "tile_m": tile_m, "tile_n": tile_n}
    outer = current()
    merged = replace(
        outer,
        **{k: v for k, v in given.items() if v is not None},
        busiest_limit=busiest_limit if family is not None else outer.busiest_limit,
        sources=tuple(sorted({**dict(outer.sources), **dict(sources or {})}.items())),
    )
    token = _CURRENT.set(merged)
    try:
        yield merged
    finally:
        _CURRENT.reset(token)
