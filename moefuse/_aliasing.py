"""Overlap checks between the arrays a call writes and those it reads, on device byte ranges.

A kernel that writes memory another operand still reads gives a silently wrong answer (GEMM1's
spare warps clear the fused `out` while x is still being read, for one), so an output or workspace
that overlaps any input, or another output, is refused before any launch. Inputs may alias each
other: they are only read."""

from __future__ import annotations

from collections.abc import Mapping


def byte_span(array) -> tuple[int, int]:
    """The `[start, end)` device bytes `array` can touch (empty for an empty array)."""
    start = array.data.ptr
    if array.size == 0:
        return start, start
    if array.flags.c_contiguous:
        return start, start + array.nbytes
    low = high = start
    for extent, stride in zip(array.shape, array.strides, strict=True):
        reach = (extent - 1) * stride
        if reach < 0:
            low += reach
        else:
            high += reach
    return low, high + array.itemsize


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < a[1] and b[0] < b[1] and a[0] < b[1] and b[0] < a[1]


def check_disjoint(written: Mapping[str, object], read: Mapping[str, tuple[int, int] | object]) -> None:
    """ValueError naming both arrays if a written array overlaps a read one or another written
    one. `read` values are arrays or precomputed byte spans (a layer's weights); None is skipped."""
    writes = [(name, byte_span(a)) for name, a in written.items() if a is not None]
    reads = [
        (name, span if isinstance(span, tuple) else byte_span(span))
        for name, span in read.items()
        if span is not None
    ]
    for i, (name, span) in enumerate(writes):
        for other, other_span in writes[i + 1 :] + reads:
            if _overlap(span, other_span):
                raise ValueError(
                    f"{name} overlaps {other} in device memory; moefuse writes {name} while it reads "
                    f"{other}, which would give a wrong result: pass a separate buffer"
                )
