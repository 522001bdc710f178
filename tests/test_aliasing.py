"""The overlap checks between what a call writes and what it reads (no GPU: arrays stand in)."""

from dataclasses import dataclass

import numpy as np
import pytest

from moefuse._aliasing import byte_span, check_device, check_disjoint


@dataclass
class _Memory:
    ptr: int
    device_id: int


class DeviceArrayStandIn:
    """A numpy array's layout at a made-up device address (what byte_span reads)."""

    def __init__(self, ptr: int, array: np.ndarray, device_id: int = 0):
        self.data, self._array = _Memory(ptr, device_id), array
        self.shape, self.strides, self.itemsize = array.shape, array.strides, array.itemsize
        self.flags, self.nbytes = array.flags, array.nbytes


def at(ptr, shape=(4, 8), dtype=np.float32, transpose=False, device_id=0):
    array = np.empty(shape, dtype)
    return DeviceArrayStandIn(ptr, array.T if transpose else array, device_id)


def span(array):
    return byte_span(array)


def check(written, read):
    check_device(0, (*read.items(), *written.items()))
    check_disjoint(tuple(written.items()), tuple(read.items()))


def test_spans_cover_the_bytes_an_array_can_touch():
    assert span(at(1000)) == (1000, 1000 + 4 * 8 * 4)
    assert span(at(1000, transpose=True)) == (1000, 1000 + 4 * 8 * 4)  # strided, same bytes
    column = DeviceArrayStandIn(2000, np.empty((4, 8), np.float32)[:, 3])
    assert span(column) == (2000, 2000 + 3 * 32 + 4)
    reversed_rows = DeviceArrayStandIn(3000, np.empty((4, 8), np.float32)[::-1])
    assert span(reversed_rows) == (3000 - 3 * 32, 3000 + 32)
    assert span(at(5000, shape=(0, 8))) == (5000, 5000)


def test_an_output_overlapping_an_input_is_named_with_it():
    with pytest.raises(ValueError, match="out overlaps x"):
        check({"out": at(1000)}, {"x": at(1064)})
    with pytest.raises(ValueError, match="workspace overlaps w2"):
        check_disjoint((("out", at(0)), ("workspace", at(10_000))), (), [("w2", (10_100, 20_000))])
    with pytest.raises(ValueError, match="out overlaps workspace"):
        check({"out": at(1000), "workspace": at(1100)}, {})


def test_adjacent_empty_and_missing_arrays_pass_and_inputs_may_alias_each_other():
    check({"out": at(1000), "workspace": None}, {"x": at(1128), "b1": None})
    check({"out": at(1064, shape=(0, 8))}, {"x": at(1000)})
    check({"out": at(0)}, {"x": at(5000), "w1": at(5000), "b1": at(5016, shape=(2,))})


def test_arrays_on_another_gpu_are_named():
    check({"out": at(0)}, {"x": at(5000)})
    with pytest.raises(ValueError, match=r"w2 is on GPU 1, but the current device is GPU 0.*Device\(1\)"):
        check({"out": at(0)}, {"x": at(5000), "w2": at(9000, device_id=1)})
    with pytest.raises(ValueError, match=r"out is on GPU 2"):
        check({"out": at(0, device_id=2)}, {"x": at(5000)})
