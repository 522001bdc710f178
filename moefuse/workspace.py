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
    """Grows to the largest layout asked of it; views carved from it share its memory."""

    def __init__(self) -> None:
        self._buffer = None
        self.generation = 0  # counts the buffers taken: carved views hold while it stays put

    @property
    def nbytes(self) -> int:
        return 0 if self._buffer is None else self._buffer.nbytes

    def reserve(self, nbytes: int) -> None:
        import cupy

        if nbytes > self.nbytes:
            self._buffer = None  # release the old buffer before taking the larger one
            self._buffer = cupy.empty(_aligned(nbytes), dtype=np.uint8)
            self.generation += 1

    def carve(self, specs: list[ArraySpec]) -> dict[str, object]:
        """Arrays laid out one after another in spec order (each start aligned)."""
        self.reserve(layout_bytes(specs))
        arrays, offset = {}, 0
        for spec in specs:
            view = self._buffer[offset : offset + spec.nbytes].view(spec.dtype)
            arrays[spec.name] = view.reshape(spec.shape)
            offset += _aligned(spec.nbytes)
        return arrays
