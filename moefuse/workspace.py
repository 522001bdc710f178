"""A reusable device buffer carved into named arrays, so steady-state forwards allocate nothing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALIGNMENT = 256  # bytes; keeps every carved array 16-byte aligned for vector loads and TMA


@dataclass(frozen=True)
class ArraySpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def layout_bytes(specs: list[ArraySpec]) -> int:
    return sum(_aligned(spec.nbytes) for spec in specs)


class Workspace:
    """A device byte buffer carved into named arrays: the layer's own, grown to the largest layout
    asked of it, or the caller's (`use`), which is never grown. Views carved from it share its
    memory and stay valid while `generation` stays the same."""

    def __init__(self, owned: bool = True) -> None:
        self._buffer = None
        self._owned = owned
        self._captured: list = []  # own buffers a captured graph uses: kept for the layer's life
        self.generation = 0  # counts the buffers taken

    @property
    def nbytes(self) -> int:
        return 0 if self._buffer is None else self._buffer.nbytes

    def reserve(self, nbytes: int) -> None:
        """Grow the own buffer to `nbytes`. The old one is let go first, so the peak is the new
        size; on out-of-memory the workspace is left empty and usable for smaller layouts."""
        import cupy

        if nbytes <= self.nbytes:
            return
        if not self._owned:
            raise ValueError(
                f"workspace has {self.nbytes} bytes; this call needs {nbytes} (the number "
                "workspace_bytes() gives for its T, k, fused_finalize and out_dtype)"
            )
        self._buffer = None
        self.generation += 1
        self._buffer = cupy.empty(_aligned(nbytes), dtype=np.uint8)

    def use(self, buffer) -> None:
        """Carve from the caller's `buffer` (C-contiguous, 16-byte aligned) from now on."""
        current = self._buffer
        if current is not None and current.data.ptr == buffer.data.ptr and current.nbytes == buffer.nbytes:
            return
        self._buffer = buffer.reshape(-1).view(np.uint8)
        self.generation += 1

    def hold_for_capture(self) -> None:
        """A graph being captured uses the current buffer: never let it go (a replay would write
        into memory the pool has handed out again)."""
        if self._owned and not any(held is self._buffer for held in self._captured):
            self._captured.append(self._buffer)

    def carve(self, specs: list[ArraySpec]) -> dict[str, object]:
        """Arrays laid out one after another in spec order (each start aligned)."""
        self.reserve(layout_bytes(specs))
        arrays, offset = {}, 0
        for spec in specs:
            view = self._buffer[offset : offset + spec.nbytes].view(spec.dtype)
            arrays[spec.name] = view.reshape(spec.shape)
            offset += _aligned(spec.nbytes)
        return arrays
