"""CUDA graph capture: whether the current stream is capturing.

Under capture, a kernel's arguments are frozen into the graph, which may be replayed long after
the call returned. So nothing the captured work touches may come from a temporary: moefuse then
refuses to copy an input (the copy would be freed while the graph still reads it), keeps a layer's
workspace buffers for its lifetime, and needs fused_moe's workspace from the caller."""

from __future__ import annotations

from typing import NoReturn


def capturing() -> bool:
    import cupy

    try:
        return cupy.cuda.get_current_stream().is_capturing()
    except cupy.cuda.runtime.CUDARuntimeError as error:
        from cuda.bindings.runtime import cudaError_t

        # Querying the legacy default stream while another stream captures is itself illegal;
        # any other error (a sticky fault from earlier work) is the caller's to see.
        if error.status == cudaError_t.cudaErrorStreamCaptureImplicit:
            return True
        raise


def refuse_copy(name: str, why: str = "is not C-contiguous and 16-byte aligned", fix: str = "") -> NoReturn:
    raise ValueError(
        f"{name} {why}, so moefuse would copy it; under CUDA graph capture that copy would be "
        f"freed while the graph still reads it. {fix or f'Make {name} contiguous before capturing'}"
    )
