// Moving rows between token order and the plan's permuted (expert-grouped) order:
//   gather_rows: x_perm[expanded_to_permuted[t*k + j]] = x[t] for every pair routed to a local
//   expert (the swapped Hopper GEMM1 then loads its token rows by TMA); padding rows are left as
//   they are. Walking tokens reads each row of x once, however many of its k slots are local.
//   finalize (the deterministic path): out[t] = sum_j topk_weights[t, j] *
//   y[expanded_to_permuted[t*k + j]], summed in fp32 in slot order (j = 0..k-1), so the result is
//   bitwise reproducible.
// Rows move as 16-byte vectors (H % 8 == 0 for 16-bit elements).
#include "common/ptx.cuh"
#include "common/spec.cuh"

constexpr int GATHER_WARPS = 8;
constexpr int FINALIZE_THREADS = 128;

// One warp per token, grid-strided; each lane holds IN_FLIGHT vectors of the row at a time and
// stores them into each of the token's permuted rows.
MOEFUSE_KERNEL(gather_rows, GATHER_WARPS * 32, 1, "op=gather_rows",
               (const Vec16* __restrict__ x, const int* __restrict__ expanded_to_permuted,
                int num_tokens, int top_k, int row_bytes, Vec16* __restrict__ x_perm),
               {"tokens_per_block", GATHER_WARPS}) {
  const int row_vectors = row_bytes / (int)sizeof(Vec16);
  constexpr int IN_FLIGHT = 4;
  const int lane = threadIdx.x % 32;
  for (int t = blockIdx.x * GATHER_WARPS + threadIdx.x / 32; t < num_tokens;
       t += gridDim.x * GATHER_WARPS) {
    const Vec16* src = x + (i64)t * row_vectors;
    for (int v = lane; v < row_vectors; v += 32 * IN_FLIGHT) {
      Vec16 chunk[IN_FLIGHT];
#pragma unroll
      for (int i = 0; i < IN_FLIGHT; ++i)
        if (v + 32 * i < row_vectors) chunk[i] = src[v + 32 * i];
      for (int j = 0; j < top_k; ++j) {
        const int p = expanded_to_permuted[(i64)t * top_k + j];
        if (p < 0) continue;
        Vec16* dst = x_perm + (i64)p * row_vectors;
#pragma unroll
        for (int i = 0; i < IN_FLIGHT; ++i)
          if (v + 32 * i < row_vectors) dst[v + 32 * i] = chunk[i];
      }
    }
  }
}

template <typename Elem>
DEV void store8(Elem* dst, const float (&v)[8]) {
  Vec16 packed;
#pragma unroll
  for (int q = 0; q < 4; ++q) packed.w[q] = pack2(dst, v[2 * q], v[2 * q + 1]);
  *reinterpret_cast<Vec16*>(dst) = packed;
}
DEV void store8(float* dst, const float (&v)[8]) {
  reinterpret_cast<float4*>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// One block per token; each thread owns 8 consecutive columns (one 16-byte vector).
template <typename Elem, typename OutT>
DEV void finalize(const Elem* __restrict__ y, const int* __restrict__ expanded_to_permuted,
                  const float* __restrict__ topk_weights, int k, int hidden,
                  OutT* __restrict__ out) {
  const i64 t = blockIdx.x;
  for (int c = threadIdx.x * 8; c < hidden; c += FINALIZE_THREADS * 8) {
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < k; ++j) {
      const int p = expanded_to_permuted[t * k + j];
      if (p < 0) continue;
      const float w = topk_weights[t * k + j];
      const Vec16 v = *reinterpret_cast<const Vec16*>(y + (i64)p * hidden + c);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 f = unpack2((Elem*)nullptr, v.w[q]);
        acc[2 * q] += w * f.x;
        acc[2 * q + 1] += w * f.y;
      }
    }
    store8(out + t * hidden + c, acc);
  }
}

#define MOEFUSE_FINALIZE_ENTRY(NAME, ELEM, OUT, ELEM_TAG, OUT_TAG)                           \
  MOEFUSE_KERNEL(NAME, FINALIZE_THREADS, 1, "op=finalize elem=" #ELEM_TAG " out=" #OUT_TAG,  \
                 (const ELEM* y, const int* expanded_to_permuted, const float* topk_weights, \
                  int top_k, int hidden, OUT* out)) {                                        \
    finalize<ELEM, OUT>(y, expanded_to_permuted, topk_weights, top_k, hidden, out);          \
  }

MOEFUSE_FINALIZE_ENTRY(finalize_bf16_out_bf16, Bf16, Bf16, bf16, bf16)
MOEFUSE_FINALIZE_ENTRY(finalize_bf16_out_f32, Bf16, float, bf16, f32)
MOEFUSE_FINALIZE_ENTRY(finalize_f16_out_f16, F16, F16, f16, f16)
MOEFUSE_FINALIZE_ENTRY(finalize_f16_out_f32, F16, float, f16, f32)
