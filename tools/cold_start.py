"""Seconds from `import moefuse` to the first result, with an empty kernel cache and a warm one.

Each measurement runs in a fresh interpreter; the first uses a new empty MOEFUSE_CACHE_DIR, the
second the same folder (every cubin already there). CuPy's own kernel cache (~/.cupy/kernel_cache
or $CUPY_CACHE_DIR) is left as it is, as a user's would be.

--layout gpt_oss measures gpt-oss's configuration instead of the standard one: weights stored
transposed with gate and up interleaved, gpt-oss's activation and biases (kernels compiled on
demand, docs/DESIGN.md D28).

--profile also prints where the time goes: the imports, the CUDA context, the inputs' upload, the
first route and forward, and inside those the kernel catalog, the kernel loads (cuModuleLoad), the
NVRTC library and CuPy's own kernels (loaded from its cache or compiled by NVRTC). The child times
these by wrapping the functions that do them; the wrappers only add up seconds and calls."""

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, time
from functools import wraps

start = time.perf_counter()
phases, inside = [], {}

def phase(name):
    global start
    now = time.perf_counter()
    phases.append((name, now - start))
    start = now

def timed(owner, attr, label):
    fn = getattr(owner, attr)

    @wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds, calls = inside[label]
            inside[label] = (seconds + time.perf_counter() - t, calls + 1)

    inside[label] = (0.0, 0)
    setattr(owner, attr, wrapper)

import numpy as np, ml_dtypes
phase("import numpy, ml_dtypes")
import cupy
phase("import cupy")
import moefuse
phase("import moefuse")
from cupy.cuda import compiler
from moefuse import _cache, _nvrtc
timed(_cache, "catalog", "kernel catalog: cubins found and read, contracts parsed (cold: compiled)")
timed(_cache, "load_function", "kernel loads: cubin lookup + cuModuleLoad (cupy.RawModule)")
timed(_nvrtc, "nvrtc_version", "  of both: the NVRTC version in the cache keys (the first loads libnvrtc)")
timed(compiler, "_compile_with_cache_cuda", "CuPy's own kernels: from its kernel cache, or compiled")
timed(compiler, "_preprocess", "  of which: an NVRTC run on an empty file, once per option set")
timed(compiler, "_compile_using_nvrtc_no_warning", "  of which: NVRTC compiles of kernels not in its cache")
cupy.cuda.runtime.free(0)
phase("CUDA context (cudaFree(0))")
rng = np.random.default_rng(0)
bf16 = ml_dtypes.bfloat16
x = cupy.asarray(rng.standard_normal((16, 1024)).astype(bf16))
w1 = cupy.asarray((rng.standard_normal((8, 1024, 1024)) / 32).astype(bf16))
w2 = cupy.asarray((rng.standard_normal((8, 1024, 512)) / 32).astype(bf16))
options = {}
if LAYOUT == "gpt_oss":
    w1, w2 = cupy.ascontiguousarray(w1.transpose(0, 2, 1)), cupy.ascontiguousarray(w2.transpose(0, 2, 1))
    b1 = cupy.asarray((rng.standard_normal((8, 1024)) / 32).astype(bf16))
    b2 = cupy.asarray((rng.standard_normal((8, 1024)) / 32).astype(bf16))
    options = dict(b1=b1, b2=b2, activation="gpt_oss", transposed=True, interleaved=True)
logits = cupy.asarray(rng.standard_normal((16, 8)).astype(np.float32))
phase("inputs to the GPU (host random numbers, copies)")
weights, ids = moefuse.route(logits, 2)
phase("first route (its kernels compile here when missing)")
out = moefuse.fused_moe(x, w1, w2, weights, ids, **options)
phase("first fused_moe (enqueued; the GEMMs its weights may use compile here)")
out.get()
phase("result to the host (waits for the GPU)")
print(json.dumps({"phases": phases, "inside": inside}))
"""


def measure(cache: str, layout: str) -> dict:
    """The child's phases [(name, seconds)] and, inside them, {label: (seconds, calls)}."""
    env = dict(os.environ, MOEFUSE_CACHE_DIR=cache)
    child = f"LAYOUT = {layout!r}\n" + CHILD
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def total(run: dict) -> float:
    return sum(seconds for _, seconds in run["phases"])


def breakdown(title: str, run: dict) -> str:
    """One run's phases, then the work timed inside them (indented rows are part of the rows above)."""
    lines = [f"{title}: import -> first result {total(run):.2f} s"]
    lines += [f"  {seconds:7.3f} s  {name}" for name, seconds in run["phases"]]
    lines.append("  inside the phases above:")
    for label, (seconds, calls) in run["inside"].items():
        lines.append(f"  {seconds:7.3f} s  {label} ({calls} calls)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", action="store_true", help="also print where the time goes")
    parser.add_argument("--layout", choices=("standard", "gpt_oss"), default="standard")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold = measure(cache, args.layout)
        warm = measure(cache, args.layout)
    print(
        f"{args.layout} layout, import -> first result: "
        f"cold cache {total(cold):.2f} s, warm cache {total(warm):.2f} s"
    )
    if args.profile:
        print(breakdown("cold cache", cold))
        print(breakdown("warm cache", warm))


if __name__ == "__main__":
    main()
