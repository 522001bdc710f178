"""Where a call's arrays live: every array on the current GPU, and no array the call writes
overlapping one it reads or another it writes.

A kernel that writes memory another operand still reads gives a silently wrong answer (GEMM1's
spare warps clear the fused `out` while x is still being read, for one), so an output or workspace
that overlaps any input, or another output, is refused before any launch. Inputs may alias each
other: they are only read. These checks run on every eager call, so they stay cheap: one look at
each array's device pointer, and byte spans only when the caller gave an output buffer."""

from __future__ import annotations

from collections.abc import Sequence

Named = Sequence[tuple[str, object]]  # (argument name, array or None)
Span = tuple[int, int]  # [first byte, end byte) of the device memory an array can touch


def byte_span(array) -> Span:
    start = array.data.ptr
    if array.flags.c_contiguous:  # the common case, and the cheaper question
        return start, start + array.nbytes
    low = high = start
    for extent, stride in zip(array.shape, array.strides, strict=True):
        reach = (extent - 1) * stride
        if reach < 0:
            low += reach
        else:
            high += reach
    return low, high + array.itemsize


def byte_spans(arrays: Named) -> list[tuple[str, Span]]:
    return [(name, byte_span(array)) for name, array in arrays if array is not None]


def check_device(device_id: int, arrays: Named) -> None:
    """ValueError naming the first array that is not on GPU `device_id`."""
    for name, array in arrays:
        if array is not None and array.data.device_id != device_id:
            on = array.data.device_id
            raise ValueError(
                f"{name} is on GPU {on}, but the current device is GPU {device_id}; call moefuse "
                f"inside `with cupy.cuda.Device({on}):`"
            )


def _overlap(a: Span, b: Span) -> bool:
    return a[0] < a[1] and b[0] < b[1] and a[0] < b[1] and b[0] < a[1]


def check_disjoint(written: Named, read: Named, held: Sequence[tuple[str, Span]] = ()) -> None:
    """ValueError naming both arrays where a written array overlaps a read one (or a `held` span,
    e.g. a layer's weights) or another written one. Nothing to check when nothing is written into
    a caller's buffer."""
    writes = byte_spans(written)
    if not writes:
        return
    reads = [*byte_spans(read), *held]
    for i, (name, span) in enumerate(writes):
        for other, other_span in (*writes[i + 1 :], *reads):
            if _overlap(span, other_span):
                raise ValueError(
                    f"{name} overlaps {other} in device memory; moefuse writes {name} while it reads "
                    f"{other}, which would give a wrong result: pass a separate buffer"
                )
