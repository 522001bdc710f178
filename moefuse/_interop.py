"""Results in the caller's array type: a call whose primary input is a JAX array returns JAX
arrays, over the same GPU memory (DLPack, no copy). Other callers get CuPy arrays.

Stream order, both ways, is the DLPack protocol's and costs no host synchronisation:
- in: `cupy.from_dlpack(jax_array)` hands JAX CuPy's current stream, and JAX makes that stream
  wait until the array is ready (XLA's WaitUntilBufferReadyOnStream);
- out: `jax.dlpack.from_dlpack(cupy_array)` hands CuPy JAX's stream for external ready events;
  CuPy records an event on its current stream (where the call launched the kernels, just before)
  and makes JAX's stream wait for it, and JAX's work on the result waits for JAX's stream.
Both happen within the call, on the CuPy stream current during it. Not under CUDA graph capture:
JAX's stream would wait on an event of the capturing stream.

Lifetime: the CuPy views of JAX inputs are dropped when the call returns, while the kernels may
still read them on the GPU; were JAX to free an input then and reuse its memory on its own stream,
the kernels could read overwritten data. So the result keeps the call's inputs alive (they are
referenced by the result's memory): an input lives at least as long as the result does.

JAX is never imported here unless the caller's array is a JAX array (so JAX is imported already).
"""

from __future__ import annotations

import sys


def is_jax_array(obj) -> bool:
    array_type = getattr(sys.modules.get("jax"), "Array", None)  # a JAX array means JAX is imported
    return array_type is not None and isinstance(obj, array_type)


def like_input(result, primary, *keep):
    """`result` (a CuPy array, or a tuple of them) as the caller passed `primary`: JAX arrays over
    the same memory when `primary` is a JAX array, each keeping `primary` and `keep` (the call's
    other inputs) alive; otherwise `result` as it is."""
    if not is_jax_array(primary):
        return result
    if isinstance(result, tuple):
        return tuple(_to_jax(r, (primary, *keep)) for r in result)
    return _to_jax(result, (primary, *keep))


def _to_jax(array, owners: tuple):
    import cupy
    from jax import dlpack

    # A view over the same bytes whose memory also holds the inputs: JAX holds the view (through
    # the DLPack capsule) as long as the JAX array lives.
    memory = cupy.cuda.UnownedMemory(array.data.ptr, array.nbytes, (array, *owners), array.device.id)
    view = cupy.ndarray(array.shape, array.dtype, cupy.cuda.MemoryPointer(memory, 0), strides=array.strides)
    return dlpack.from_dlpack(view)
