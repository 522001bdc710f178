"""Results come back in the caller's array type; for anything but JAX that is CuPy's, and moefuse
never imports JAX itself (no GPU needed: the JAX round trip is tests/test_gpu_jax.py)."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from moefuse._interop import like_input

ROOT = Path(__file__).resolve().parent.parent


def test_other_callers_get_the_result_as_it_is():
    result, pair = object(), (object(), object())
    assert like_input(result, np.zeros(1)) is result
    assert like_input(pair, None, np.zeros(1)) is pair


def test_moefuse_never_imports_jax():
    code = (
        "import sys, numpy, moefuse, moefuse.info; from moefuse._interop import like_input; "
        "like_input(1, numpy.zeros(1)); assert 'jax' not in sys.modules, 'jax imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
