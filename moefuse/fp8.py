"""fp8 (e4m3) expert weights: the two scale formats, quantising 16-bit weights into them and back,
and taking users' fp8 arrays (docs/DESIGN.md D30).

A weight is `w = q * scale`, q an e4m3 value (float8_e4m3fn: max 448, no infinities, 0x7F/0xFF
NaN) and scale an fp32 number per 128 x 128 block of each expert matrix as stored ("block",
DeepSeek-V3's and transformers' `scale_inv`) or per expert matrix ("tensor"). Activations are
quantised by the kernels per token: x per 128 values of H ("block") or per row ("tensor"), h per
64 values of I (`H_GROUP`), by the recipe `quantize_weights` uses on blocks of weights:
`amax = max(max(|v|), 1e-4)`, `scale = amax / 448`, `q = e4m3(v * (448 / amax))`, rounded to
nearest even with IEEE float32 division (moefuse.reference.quantize_groups has its bits).

CuPy 14.2 and float8 (checked with CuPy 14.2.0 and ml_dtypes 0.7 on a machine without a GPU):
- An ml_dtypes `float8_e4m3fn` CuPy array exists only as a view: `u8.view(float8_e4m3fn)`,
  `cupy.ndarray(shape, float8_e4m3fn, memptr=...)`, and slices, reshapes and `.view(uint8)` of
  those work. Anything that allocates one (`cupy.empty`, `zeros_like`, `ascontiguousarray` of a
  strided view, `cupy.asarray` of a numpy float8 array) raises `ValueError: Unsupported dtype
  float8_e4m3fn`: CuPy's `check_supported_dtype` wants a C type name and `_scalar.get_typename`
  has none for float8. The same lookup names the element type of every elementwise and
  reduction kernel, so CuPy does no arithmetic on float8 (`copy`, `astype`: read from CuPy's
  sources, not run here). `_dtype.to_cuda_dtype` (cuBLAS types) raises TypeError.
- `cupy.from_dlpack` of a DLPack float8 tensor (DLPack 1.1 code 10, kDLFloat8_e4m3fn) raises
  `TypeError: Unsupported dtype. dtype code: 10` (checked with a capsule built by hand); its DLPack
  knows ints, floats, bfloat16, complex and bool. So a torch float8_e4m3fn tensor crosses as its
  `view(torch.uint8)`, which DLPack carries.
So moefuse holds e4m3 weights on the GPU as uint8 arrays of their bits.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from ._arrays import BFLOAT16, E4M3, FLOAT16, FLOAT32, UINT8, as_device_array
from .kernels import cdiv

FORMAT_KINDS = ("block", "tensor")
BLOCK = 128  # weights: 128 x 128 blocks; x: 128 values of H per scale ("block")
H_GROUP = 64  # h, GEMM2's input: 64 values of I per scale (docs/DESIGN.md D30)
E4M3_MAX = 448.0
AMAX_FLOOR = 1e-4  # a zero group gets scale 1e-4 / 448 and q = 0 (DeepGEMM's clamp)
WEIGHT_DTYPES = (BFLOAT16, FLOAT16, FLOAT32)
OUTPUT_DTYPES = (np.dtype(np.float64), FLOAT32, BFLOAT16, FLOAT16)


@dataclass(frozen=True)
class Fp8Format:
    """How fp8 expert weights are scaled: one fp32 scale per `block` x `block` tile of each expert
    matrix as stored ("block") or one per expert matrix ("tensor"). Only 128 x 128 blocks: the
    kernels' K step is one block."""

    kind: str = "block"
    block: int = BLOCK

    def __post_init__(self) -> None:
        if self.kind not in FORMAT_KINDS:
            raise ValueError(f"format must be one of {FORMAT_KINDS}, got {self.kind!r}")
        if self.block != BLOCK:
            raise ValueError(f"fp8 weight blocks must be {BLOCK} x {BLOCK}, got {self.block}")

    @classmethod
    def of(cls, scale) -> Fp8Format:
        """The format of a scale array of a valid shape: `[E]` or `[E, 1, 1]` per tensor, else
        blocks. (`[E, 1, 1]` of matrices within one block reads the same either way.)"""
        per_tensor = scale.ndim == 1 or tuple(scale.shape[1:]) == (1, 1)
        return cls("tensor") if per_tensor else cls("block")

    def scale_shape(self, weight_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The scales of weights `[E, rows, cols]`: `[E, ceil(rows / 128), ceil(cols / 128)]` or `[E]`."""
        experts, rows, cols = weight_shape
        if self.kind == "tensor":
            return (experts,)
        return (experts, cdiv(rows, self.block), cdiv(cols, self.block))

    def x_group(self, hidden: int) -> int:
        """Values of x per scale: a block, or the whole row of H (per tensor: one scale per token)."""
        return self.block if self.kind == "block" else hidden


def _array_module(array):
    """numpy for numpy arrays; CuPy for anything else (taken by moefuse's intake)."""
    if isinstance(array, np.ndarray):
        return np, array
    import cupy

    return cupy, as_device_array(array, "w")


# Bits of float32: the smallest normal e4m3 magnitude 2^-6, and exponent bias 127 - 7 in the
# 4-bit exponent field's place (3 mantissa bits below it).
_NORMAL_MIN_BITS = np.uint32(121 << 23)
_REBIAS = np.uint32(120 << 3)


def e4m3_bits(values, xp=np):
    """The e4m3fn bits (uint8) of float32 `values` within [-448, 448], or NaN: round to nearest,
    ties to even, on the float32 bits (numpy or CuPy, no float8 type needed). NaN gives 0x7F with
    the NaN's sign bit."""
    bits = values.view(xp.uint32)
    sign = (bits >> np.uint32(24)) & np.uint32(0x80)
    magnitude = bits & np.uint32(0x7FFFFFFF)
    # |v| >= 2^-6: keep 3 of the 23 mantissa bits, ties to even; a carry steps into the next binade.
    keep = (magnitude >> np.uint32(20)) & np.uint32(1)
    normal = ((magnitude + np.uint32(0x7FFFF) + keep) >> np.uint32(20)) - _REBIAS
    # |v| < 2^-6: multiples of 2^-9 (8 of them is 2^-6, the first normal's bits too), exact in float32.
    small = xp.where(magnitude < _NORMAL_MIN_BITS, xp.abs(values), np.float32(0))
    subnormal = xp.rint(small * np.float32(512)).astype(xp.uint32)
    out = xp.where(magnitude >= _NORMAL_MIN_BITS, normal, subnormal)
    out = xp.where(magnitude > np.uint32(0x7F800000), np.uint32(0x7F), out)
    return (out | sign).astype(xp.uint8)


def e4m3_values(bits, dtype=np.float32, xp=np):
    """The values of e4m3fn `bits` (uint8) in `dtype` (exact in any of float64, float32, bf16, fp16)."""
    code = bits.astype(xp.int32)
    exponent, mantissa = (code >> 3) & 0xF, code & 7
    significand = xp.where(exponent == 0, mantissa, mantissa + 8).astype(dtype)
    magnitude = xp.ldexp(significand, xp.maximum(exponent, 1) - 10)  # (8 + m) 2^(e - 10), m 2^-9
    value = xp.where((code & 0x80) != 0, -magnitude, magnitude)
    return xp.where((code & 0x7F) == 0x7F, np.dtype(dtype).type(np.nan), value)


def _quantize(values, amax, xp):
    """The recipe: `(q bits, scale)` of float32 `values` whose groups have maxima `amax` (broadcast
    against them)."""
    amax = xp.maximum(amax, np.float32(AMAX_FLOOR))
    inverse = xp.divide(np.float32(E4M3_MAX), amax)  # IEEE float32 division
    scaled = xp.clip(values * inverse, np.float32(-E4M3_MAX), np.float32(E4M3_MAX))
    return e4m3_bits(scaled, xp), amax / np.float32(E4M3_MAX)


def _quantize_matrix(matrix, fmt: Fp8Format, xp):
    """(q bits, scales) of one float32 matrix: per block (zero padding leaves each amax as it is)
    or as a whole."""
    if fmt.kind == "tensor":
        return _quantize(matrix, xp.abs(matrix).max(), xp)
    rows, cols = matrix.shape
    block_rows, block_cols = cdiv(rows, fmt.block), cdiv(cols, fmt.block)
    padded = xp.zeros((block_rows * fmt.block, block_cols * fmt.block), np.float32)
    padded[:rows, :cols] = matrix
    tiles = padded.reshape(block_rows, fmt.block, block_cols, fmt.block)
    amax = xp.abs(tiles).max(axis=(1, 3))
    bits, scale = _quantize(tiles, amax[:, None, :, None], xp)
    return bits.reshape(padded.shape)[:rows, :cols], scale[:, 0, :, 0]


def quantize_weights(w, format: str = "block") -> tuple:
    """fp8 weights `q` and fp32 `scale` with `w ~ q * scale`, for weights `w [E, rows, cols]`
    (bf16, fp16 or fp32; any layout: blocks follow the stored axes, so w1 `[E, 2I, H]` gets
    `scale [E, ceil(2I/128), ceil(H/128)]`), per 128 x 128 block (`format="block"`) or per expert
    matrix (`"tensor"`: `scale [E]`), by the recipe in the module docstring.

    numpy in, numpy out: q is `ml_dtypes.float8_e4m3fn`. A GPU array (CuPy, or anything moefuse
    takes) gives CuPy arrays, q as uint8 bits (CuPy cannot allocate float8;
    `q.view(ml_dtypes.float8_e4m3fn)` is a view), computed on the current stream without waiting
    for it, one expert at a time (temporaries of a few expert matrices). A NaN in a block makes its
    scale NaN, an inf its scale inf: every dequantised value of that block is then NaN."""
    fmt = Fp8Format(format)
    xp, w = _array_module(w)
    if w.ndim != 3:
        raise ValueError(f"w must be 3-D [E, rows, cols] expert matrices, got shape {tuple(w.shape)}")
    if np.dtype(w.dtype) not in WEIGHT_DTYPES:
        raise TypeError(f"w must be bfloat16, float16 or float32, got {np.dtype(w.dtype)}")
    q = xp.empty(w.shape, np.uint8)
    scale = xp.empty(fmt.scale_shape(w.shape), np.float32)
    for e in range(w.shape[0]):
        q[e], scale[e] = _quantize_matrix(w[e].astype(np.float32), fmt, xp)
    return (q.view(E4M3) if xp is np else q), scale


def dequantize_weights(q, scale, dtype=np.float32):
    """`w = q * scale` in `dtype` (float64, float32, bf16 or fp16) for fp8 weights `q [E, rows,
    cols]` (float8_e4m3fn, or its bits as uint8) and scales as `quantize_weights` makes them
    (`[E]` and `[E, 1, 1]` per tensor). float64 is exact; the others round the float32 product
    once more. numpy or CuPy (then on the current stream, one expert at a time)."""
    xp = np if isinstance(q, np.ndarray) else sys.modules["cupy"]
    dtype = np.dtype(dtype)
    if dtype not in OUTPUT_DTYPES:
        raise TypeError(f"dtype must be float64, float32, bfloat16 or float16, got {dtype}")
    if np.dtype(q.dtype) not in (E4M3, UINT8) or q.ndim != 3:
        raise TypeError(f"q must be 3-D float8_e4m3fn (or its bits as uint8), got {q.dtype} {tuple(q.shape)}")
    fmt = Fp8Format.of(scale)
    experts, rows, cols = q.shape
    if tuple(scale.shape) not in (fmt.scale_shape(q.shape), (experts, 1, 1)):
        raise ValueError(
            f"scale must be {fmt.scale_shape(q.shape)} for q {tuple(q.shape)}, got {tuple(scale.shape)}"
        )
    compute = np.dtype(np.float64) if dtype == np.float64 else FLOAT32
    bits = q.view(np.uint8)
    out = xp.empty(q.shape, dtype)
    for e in range(experts):
        values = e4m3_values(bits[e], compute, xp)
        s = scale[e].astype(compute)
        if fmt.kind == "block":
            s = xp.repeat(xp.repeat(s, fmt.block, axis=0)[:rows], fmt.block, axis=1)[:, :cols]
        out[e] = (values * s).astype(dtype)
    return out


def as_e4m3_device_array(obj, name: str):
    """A user's fp8 weights as a GPU array, float8_e4m3fn taken as a uint8 array of its bits over
    the same memory (module docstring): CuPy arrays, torch tensors (through `view(torch.uint8)`,
    found without importing torch), anything else moefuse takes. Other float8 formats raise
    TypeError naming `name`; every other dtype is returned as it is, for the checks."""
    dtype_name = str(getattr(obj, "dtype", "")).rpartition(".")[2]  # numpy, CuPy, JAX, torch
    if dtype_name.startswith("float8") and dtype_name != E4M3.name:
        raise TypeError(f"{name} must be float8_e4m3fn (or its bits as uint8), got {dtype_name}")
    torch = sys.modules.get("torch")  # a torch tensor means torch is imported
    if dtype_name == E4M3.name and torch is not None and isinstance(obj, torch.Tensor):
        obj = obj.view(torch.uint8)
    try:
        array = as_device_array(obj, name)
    except (TypeError, BufferError) as error:
        if dtype_name != E4M3.name or isinstance(obj, np.ndarray):
            raise
        raise TypeError(
            f"{name}: CuPy cannot take a float8_e4m3fn {type(obj).__name__} through DLPack ({error}); "
            "pass its bits as a uint8 array of the same shape"
        ) from error
    return array.view(np.uint8) if np.dtype(array.dtype) == E4M3 else array
