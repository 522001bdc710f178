"""Where a call's arrays live: every array on the current GPU, and no array the call writes
overlapping one it reads or another it writes.

A kernel that writes memory another operand still reads gives a silently wrong answer (GEMM1's
spare warps clear the fused `out` while x is still being read, for one), so an output or workspace
that overlaps any input, or another output, is refused before any launch. Inputs may alias each
other: they are only read. Each array is looked at once (its device pointer object is the costly
part of an eager call's checks)."""

from __future__ import annotations

from collections.abc import Mapping

Footprint = tuple[int, int, int]  # (device id, first byte, end byte) of the memory an array can touch


def footprint(array) -> Footprint:
    memory = array.data
    start = memory.ptr
    if array.size == 0:
        return memory.device_id, start, start
    low = high = start
    for extent, stride in zip(array.shape, array.strides, strict=True):
        reach = (extent - 1) * stride
        if reach < 0:
            low += reach
        else:
            high += reach
    return memory.device_id, low, high + array.itemsize


def footprints(arrays: Mapping[str, object]) -> dict[str, Footprint]:
    """The footprints of the arrays that are given (None is skipped)."""
    return {name: footprint(array) for name, array in arrays.items() if array is not None}


def _overlap(a: Footprint, b: Footprint) -> bool:
    return a[1] < a[2] and b[1] < b[2] and a[1] < b[2] and b[1] < a[2]


def check_arrays(device_id: int, read: Mapping[str, Footprint], written: Mapping[str, Footprint]) -> None:
    """ValueError naming the array that is not on GPU `device_id`, or both arrays of an overlap
    between a written array and a read or another written one."""
    for name, (array_device, _, _) in (*read.items(), *written.items()):
        if array_device != device_id:
            raise ValueError(
                f"{name} is on GPU {array_device}, but the current device is GPU {device_id}; call "
                f"moefuse inside `with cupy.cuda.Device({array_device}):`"
            )
    writes = list(written.items())
    for i, (name, span) in enumerate(writes):
        for other, other_span in (*writes[i + 1 :], *read.items()):
            if _overlap(span, other_span):
                raise ValueError(
                    f"{name} overlaps {other} in device memory; moefuse writes {name} while it reads "
                    f"{other}, which would give a wrong result: pass a separate buffer"
                )
