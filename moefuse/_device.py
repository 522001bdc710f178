"""The GPU: whether there is one, which architecture to compile for, the current stream."""

from __future__ import annotations

from functools import cache


class NoGPUError(RuntimeError):
    """Raised by every GPU function when no usable NVIDIA GPU is present."""


MIN_COMPUTE_CAPABILITY = (8, 0)


@cache
def _device_count() -> int:
    import cupy

    try:
        return cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        raise NoGPUError(f"moefuse needs an NVIDIA GPU, and CUDA found none: {exc}") from None


def require_gpu() -> int:
    """The current CUDA device id; NoGPUError if there is no usable GPU."""
    import cupy

    if _device_count() == 0:
        raise NoGPUError("moefuse needs an NVIDIA GPU, and CUDA found none")
    device_id = cupy.cuda.Device().id
    if compute_capability(device_id) < MIN_COMPUTE_CAPABILITY:
        major, minor = compute_capability(device_id)
        raise NoGPUError(
            f"moefuse needs compute capability 8.0 or newer; device {device_id} is {major}.{minor}"
        )
    return device_id


@cache
def compute_capability(device_id: int) -> tuple[int, int]:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    return props["major"], props["minor"]


def arch_for(capability: tuple[int, int]) -> str:
    """NVRTC target for a compute capability: the arch-specific `a` targets on Hopper/Blackwell."""
    major, minor = capability
    suffix = "a" if major in (9, 10) else ""
    return f"sm_{major}{minor}{suffix}"


@cache
def device_arch(device_id: int) -> str:
    return arch_for(compute_capability(device_id))


def gpu_name(device_id: int | None = None) -> str:
    import cupy

    device_id = require_gpu() if device_id is None else device_id
    name = cupy.cuda.runtime.getDeviceProperties(device_id)["name"]
    return name.decode() if isinstance(name, bytes) else name


def stream_ptr() -> int:
    import cupy

    return cupy.cuda.get_current_stream().ptr


@cache
def multiprocessor_count(device_id: int) -> int:
    import cupy

    return cupy.cuda.runtime.getDeviceProperties(device_id)["multiProcessorCount"]
