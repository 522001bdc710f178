"""What the probes share: the SASS of a cubin by function and its check, and CUDA-event medians."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np


def sass_functions(cubin: bytes) -> dict[str, str] | None:
    """The cubin's SASS by function name (cuobjdump), or None where no cuobjdump is installed
    (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)."""
    tool = shutil.which("cuobjdump") or next(
        (str(p) for p in Path(np.__file__).parents[1].glob("nvidia/cu*/bin/cuobjdump")), None
    )
    if tool is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    return {function.split()[0]: function for function in sass.split("Function : ")[1:]}


def check_sass(cubin: bytes, report, verdict) -> None:
    """`report(what, result, ok)` for each function of the cubin that `verdict(name, sass)` judges
    (it returns `(result, ok)`, or None to pass a function by); one line where no cuobjdump is
    installed."""
    functions = sass_functions(cubin)
    if functions is None:
        report("SASS", "cuobjdump not found: not checked")
        return
    for name, function in functions.items():
        judged = verdict(name, function)
        if judged is not None:
            report(f"SASS {name}", *judged)


def median_ms(run, reps: int = 7) -> float:
    """Median time of `run()` on CuPy's current stream (one warm-up)."""
    import cupy

    run()
    times = []
    for _ in range(reps):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))
