"""A plain CuPy MoE layer: route the router's logits, run the experts, and check the result
against moefuse's float64 reference; then the same with gpt-oss's weight layout and activation.

    python examples/cupy_layer.py
"""

import cupy as cp
import ml_dtypes
import numpy as np

import moefuse
from moefuse import reference

TOKENS, HIDDEN, INTER, EXPERTS, TOP_K = 256, 1024, 512, 16, 4
rng = np.random.default_rng(0)


def device(shape, scale=1.0):
    return cp.asarray((rng.standard_normal(shape) * scale).astype(ml_dtypes.bfloat16))


def check(name: str, layer: moefuse.MoELayer, w1, w2, b1=None, b2=None, **layout) -> None:
    x = device((TOKENS, HIDDEN))
    logits = cp.asarray(rng.standard_normal((TOKENS, EXPERTS)).astype(np.float32))
    weights, ids = moefuse.route(logits, TOP_K)  # softmax over the experts, top k, on the GPU
    out = layer(x, weights, ids)
    expected = reference.moe(*map(cp.asnumpy, (x, w1, w2, weights, ids)), b1, b2, **layout)
    error = reference.relative_error(cp.asnumpy(out), expected)
    print(f"{name}: out {out.shape} {out.dtype}, relative error vs float64 reference {error:.1e}")
    assert error < 1e-2


w1 = device((EXPERTS, 2 * INTER, HIDDEN), HIDDEN**-0.5)  # gate rows, then up rows
w2 = device((EXPERTS, HIDDEN, INTER), INTER**-0.5)
check("SwiGLU", moefuse.MoELayer(w1, w2), w1, w2)

# gpt-oss: w1 [E, H, 2I] with gate j and up j in columns 2j and 2j + 1, w2 [E, I, H], biases,
# and its clamped gate; Hopper reads this layout in place.
w1 = device((EXPERTS, HIDDEN, 2 * INTER), HIDDEN**-0.5)
w2 = device((EXPERTS, INTER, HIDDEN), INTER**-0.5)
b1, b2 = device((EXPERTS, 2 * INTER), 0.1), device((EXPERTS, HIDDEN), 0.1)
layout = dict(activation=moefuse.Activation("gpt_oss"), transposed=True, interleaved=True)
layer = moefuse.MoELayer(w1, w2, b1, b2, **layout)
check("gpt-oss", layer, w1, w2, cp.asnumpy(b1), cp.asnumpy(b2), **layout)
