// Activations to e4m3 for the fp8 GEMMs (docs/DESIGN.md D30), per row of x [T, H] and per group of
// values along it: 128 ("group=128", weights scaled per 128 x 128 block) or the whole row
// ("group=row", weights scaled per tensor):
//   amax = max(|v|) over the group, NaN ignored (fmaxf), then amax = fmaxf(amax, 1e-4)
//   x_q  = e4m3(v * (448 / amax))  IEEE division; to nearest even, saturating, NaN stays NaN
//   x_s  = amax / 448              so that v ~ x_q * x_s
// x bf16 or fp16, x_q [T, H] e4m3 bytes, x_s [T, ceil(H / group)] f32 row-major. A lane moves 16
// bytes of x (8 values) at a time: H % 16 == 0 (the fp8 layer's requirement) keeps every vector
// inside the row and whole in or out of a group. amax is exact in any order, so the bits match
// moefuse.reference.quantize_groups'.
#include "common/ptx.cuh"
#include "common/spec.cuh"

constexpr int QUANT_WARPS = 8;
constexpr int VALUES_PER_LANE = 8;  // one 16-byte vector of bf16 or fp16
constexpr int GROUP = 128;
constexpr int LANES_PER_GROUP = GROUP / VALUES_PER_LANE;
constexpr float E4M3_MAX = 448.0f;
constexpr float AMAX_FLOOR = 1e-4f;

template <typename Elem>
DEV void load8(const Elem* src, float (&v)[VALUES_PER_LANE]) {
  const Vec16 raw = *reinterpret_cast<const Vec16*>(src);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float2 f = unpack2((Elem*)nullptr, raw.w[q]);
    v[2 * q] = f.x;
    v[2 * q + 1] = f.y;
  }
}

DEV float amax8(const float (&v)[VALUES_PER_LANE], float amax) {
#pragma unroll
  for (int i = 0; i < VALUES_PER_LANE; ++i) amax = fmaxf(amax, fabsf(v[i]));
  return amax;
}

// The max over LANES consecutive lanes (aligned), in each of them; the whole warp takes part.
template <int LANES>
DEV float lanes_max(float value) {
#pragma unroll
  for (int offset = LANES / 2; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// v * (448 / amax) as 8 e4m3 bytes, stored as one 8-byte vector.
DEV void store8_e4m3(u8* dst, const float (&v)[VALUES_PER_LANE], float amax) {
  const float inverse = E4M3_MAX / amax;
  u32 word[2];
#pragma unroll
  for (int w = 0; w < 2; ++w) {
    const u32 lo = pack_e4m3x2(v[4 * w] * inverse, v[4 * w + 1] * inverse);
    const u32 hi = pack_e4m3x2(v[4 * w + 2] * inverse, v[4 * w + 3] * inverse);
    word[w] = lo | hi << 16;
  }
  *reinterpret_cast<uint2*>(dst) = make_uint2(word[0], word[1]);
}

// Group 128: 16 lanes (a half warp) per group, grid over every (row, group).
template <typename Elem>
DEV void quantize_groups_128(const Elem* __restrict__ x, int num_tokens, int hidden,
                             u8* __restrict__ x_q, float* __restrict__ x_s) {
  const int groups = (hidden + GROUP - 1) / GROUP;
  const i64 unit = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / LANES_PER_GROUP;
  const i64 row = unit / groups;
  const int group = (int)(unit % groups);
  const int lane = threadIdx.x % LANES_PER_GROUP;
  const int col = group * GROUP + lane * VALUES_PER_LANE;
  // No early return: every lane of the warp takes part in the shuffles.
  const bool active = row < num_tokens && col < hidden;
  float v[VALUES_PER_LANE] = {};
  if (active) load8(x + row * hidden + col, v);
  const float amax = fmaxf(lanes_max<LANES_PER_GROUP>(amax8(v, 0.0f)), AMAX_FLOOR);
  if (active) store8_e4m3(x_q + row * hidden + col, v, amax);
  if (lane == 0 && row < num_tokens) x_s[row * groups + group] = amax / E4M3_MAX;
}

// A whole row per group: a warp per row, one pass for amax and one to convert (the row's second
// read comes from L1 or L2).
template <typename Elem>
DEV void quantize_whole_rows(const Elem* __restrict__ x, int num_tokens, int hidden,
                             u8* __restrict__ x_q, float* __restrict__ x_s) {
  const i64 row = (i64)blockIdx.x * QUANT_WARPS + threadIdx.x / 32;
  if (row >= num_tokens) return;  // the whole warp leaves together
  const int lane = threadIdx.x % 32;
  const Elem* src = x + row * hidden;
  float amax = 0.0f;
  for (int col = lane * VALUES_PER_LANE; col < hidden; col += 32 * VALUES_PER_LANE) {
    float v[VALUES_PER_LANE];
    load8(src + col, v);
    amax = amax8(v, amax);
  }
  amax = fmaxf(lanes_max<32>(amax), AMAX_FLOOR);
  for (int col = lane * VALUES_PER_LANE; col < hidden; col += 32 * VALUES_PER_LANE) {
    float v[VALUES_PER_LANE];
    load8(src + col, v);
    store8_e4m3(x_q + row * hidden + col, v, amax);
  }
  if (lane == 0) x_s[row] = amax / E4M3_MAX;
}

// "scales_per_block": the x_s entries one block writes, which sizes the grid.
#define MOEFUSE_QUANTIZE_ENTRY(NAME, ELEM, ELEM_TAG, GROUP_TAG, BODY, SCALES_PER_BLOCK) \
  MOEFUSE_KERNEL(NAME, QUANT_WARPS * 32, 1,                                             \
                 "op=quantize_rows elem=" #ELEM_TAG " group=" #GROUP_TAG,               \
                 (const ELEM* x, int num_tokens, int hidden, u8* x_q, float* x_s),      \
                 {"scales_per_block", SCALES_PER_BLOCK}) {                              \
    BODY<ELEM>(x, num_tokens, hidden, x_q, x_s);                                        \
  }

MOEFUSE_QUANTIZE_ENTRY(quantize_rows_bf16_g128, Bf16, bf16, 128, quantize_groups_128,
                       QUANT_WARPS * 32 / LANES_PER_GROUP)
MOEFUSE_QUANTIZE_ENTRY(quantize_rows_f16_g128, F16, f16, 128, quantize_groups_128,
                       QUANT_WARPS * 32 / LANES_PER_GROUP)
MOEFUSE_QUANTIZE_ENTRY(quantize_rows_bf16_row, Bf16, bf16, row, quantize_whole_rows, QUANT_WARPS)
MOEFUSE_QUANTIZE_ENTRY(quantize_rows_f16_row, F16, f16, row, quantize_whole_rows, QUANT_WARPS)
