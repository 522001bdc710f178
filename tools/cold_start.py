"""Seconds from `import moefuse` to the first result, with an empty kernel cache and a warm one.

Each measurement runs in a fresh interpreter; the first uses a new empty MOEFUSE_CACHE_DIR, the
second the same folder (every cubin already there)."""

import argparse
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import time
start = time.perf_counter()
import cupy, numpy as np, ml_dtypes
import moefuse
rng = np.random.default_rng(0)
bf16 = ml_dtypes.bfloat16
x = cupy.asarray(rng.standard_normal((16, 1024)).astype(bf16))
w1 = cupy.asarray((rng.standard_normal((8, 1024, 1024)) / 32).astype(bf16))
w2 = cupy.asarray((rng.standard_normal((8, 1024, 512)) / 32).astype(bf16))
weights, ids = moefuse.route(cupy.asarray(rng.standard_normal((16, 8)).astype(np.float32)), 2)
out = moefuse.fused_moe(x, w1, w2, weights, ids)
out.get()
print(f"{time.perf_counter() - start:.2f}")
"""


def measure(cache: str) -> float:
    env = dict(os.environ, MOEFUSE_CACHE_DIR=cache)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold = measure(cache)
        warm = measure(cache)
    print(f"import -> first result: cold cache {cold:.2f} s, warm cache {warm:.2f} s")


if __name__ == "__main__":
    main()
