"""The overlap checks between what a call writes and what it reads (no GPU: arrays stand in)."""

from dataclasses import dataclass

import numpy as np
import pytest

from moefuse._aliasing import byte_span, check_disjoint


@dataclass
class _Pointer:
    ptr: int


class DeviceArrayStandIn:
    """A numpy array's shape and strides at a made-up device address (what byte_span reads)."""

    def __init__(self, ptr: int, array: np.ndarray):
        self.data, self._array = _Pointer(ptr), array
        self.shape, self.strides, self.size = array.shape, array.strides, array.size
        self.nbytes, self.itemsize, self.flags = array.nbytes, array.itemsize, array.flags


def at(ptr, shape=(4, 8), dtype=np.float32, transpose=False):
    array = np.empty(shape, dtype)
    return DeviceArrayStandIn(ptr, array.T if transpose else array)


def test_spans_cover_the_bytes_an_array_can_touch():
    assert byte_span(at(1000)) == (1000, 1000 + 4 * 8 * 4)
    assert byte_span(at(1000, transpose=True)) == (1000, 1000 + 4 * 8 * 4)  # strided, same bytes
    column = DeviceArrayStandIn(2000, np.empty((4, 8), np.float32)[:, 3])
    assert byte_span(column) == (2000, 2000 + 3 * 32 + 4)
    reversed_rows = DeviceArrayStandIn(3000, np.empty((4, 8), np.float32)[::-1])
    assert byte_span(reversed_rows) == (3000 - 3 * 32, 3000 + 32)
    assert byte_span(at(5000, shape=(0, 8))) == (5000, 5000)


def test_an_output_overlapping_an_input_is_named_with_it():
    with pytest.raises(ValueError, match="out overlaps x"):
        check_disjoint({"out": at(1000)}, {"x": at(1064)})
    with pytest.raises(ValueError, match="workspace overlaps w2"):
        check_disjoint({"out": at(0), "workspace": at(10_000)}, {"w2": (10_100, 20_000)})
    with pytest.raises(ValueError, match="out overlaps workspace"):
        check_disjoint({"out": at(1000), "workspace": at(1100)}, {})


def test_adjacent_empty_and_missing_arrays_pass_and_inputs_may_alias_each_other():
    check_disjoint({"out": at(1000), "workspace": None}, {"x": at(1128), "b1": None})
    check_disjoint({"out": at(1064, shape=(0, 8))}, {"x": at(1000)})
    check_disjoint({"out": at(0)}, {"x": at(5000), "w1": at(5000), "b1": at(5016, shape=(2,))})


def test_arrays_on_another_gpu_are_named():
    from moefuse._arrays import require_same_device

    class OnDevice:
        def __init__(self, device_id):
            self.data = type("Pointer", (), {"device_id": device_id})()

    require_same_device({"x": OnDevice(0), "out": None}, 0)
    with pytest.raises(ValueError, match=r"w2 is on GPU 1, but the current device is GPU 0.*Device\(1\)"):
        require_same_device({"x": OnDevice(0), "w2": OnDevice(1)}, 0)
