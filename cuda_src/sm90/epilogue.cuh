// The sm90 epilogue in three pieces, which each kernel family composes for its fragment layout:
//   (1) finished values from the f32 accumulators: the gated activation with bias, the plain
//       store's acc + bias (relu^2 of it), the scatter's router weight * (acc + bias);
//   (2) staging through the consumer warpgroup's shared memory, converted to the output type:
//       fragments in place (row-major tiles) or transposed (swapped operands), so that
//   (3) the write-out moves coalesced 16-byte vectors: st.global, or red.global.add (scatter).
#pragma once
#include "config.cuh"

namespace sm90 {

// ---- (1) finished values ------------------------------------------------------------------------
// Gated: gated_activation (common/activation.cuh). The others: acc + bias, then relu^2 (Relu2) or
// times the router weight `scale` (ScatterAdd).
template <Epilogue EPI>
DEV float finish_linear(float acc, float bias, float scale) {
  static_assert(!is_gated(EPI), "a gated epilogue pairs gate and up: gated_activation()");
  if constexpr (EPI == Epilogue::ScatterAdd) {
    return scale * (acc + bias);
  } else if constexpr (EPI == Epilogue::Relu2) {
    return relu2(acc + bias);
  } else {
    return acc + bias;
  }
}

// fp8 outputs (GEMM1's h): the largest magnitude of a fragment row's values across the quad of
// threads that holds the row (NaN dropped, as fmaxf does), and the row's e4m3 scale from it.
DEV float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
// The quantiser every fp8 producer shares (quant.cu, moefuse.reference.quantize_groups): values v
// are stored as e4m3(v * inv) (pack_e4m3x2) and read back as q * scale. IEEE divisions.
struct E4m3Scale {
  float scale, inv;
};
DEV E4m3Scale e4m3_scale(float amax) {
  constexpr float E4M3_MAX = 448.0f;
  amax = fmaxf(amax, 1e-4f);  // an all-zero group's amax
  return E4m3Scale{amax / E4M3_MAX, E4M3_MAX / amax};
}

// ---- (2) staging -------------------------------------------------------------------------------
// Two finished values of consecutive output columns, converted, at `dst`.
template <typename OutT>
DEV void stage_pair(unsigned char* dst, float v0, float v1) {
  if constexpr (sizeof(OutT) == 2) {
    *reinterpret_cast<u32*>(dst) = pack2((OutT*)nullptr, v0, v1);
  } else {
    *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
  }
}

// One finished value of a 16-bit output (GEMM1's h) at `dst`.
template <typename OutT>
DEV void stage_one(unsigned char* dst, float v) {
  static_assert(sizeof(OutT) == 2, "a 16-bit output");
  *reinterpret_cast<u16*>(dst) = (u16)pack2((OutT*)nullptr, v, 0.0f);
}

// Stages the values v[m][q] of 8x8 matrices m = 0..3 of a warp's fragment (thread l: fragment
// row l/4, columns 2(l%4) + q), transposed: fragment column c of matrix m lands in staging row
// place(m).row + c, at byte place(m).col_bytes. 16-bit outputs go as one stmatrix (lane l passes
// the address of row l%8 of matrix l/8); floats one by one.
struct Place {
  int row, col_bytes;
};
template <typename OutT, int PITCH, typename PlaceFn>
DEV void stage_transposed(unsigned char* staging, const float (&v)[4][2], PlaceFn place, int lane) {
  if constexpr (sizeof(OutT) == 2) {
    const Place mine = place(lane / 8);
    OutT* tag = nullptr;
    stmatrix_x4_trans(staging + (mine.row + lane % 8) * PITCH + mine.col_bytes,
                      pack2(tag, v[0][0], v[0][1]), pack2(tag, v[1][0], v[1][1]),
                      pack2(tag, v[2][0], v[2][1]), pack2(tag, v[3][0], v[3][1]));
  } else {
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const Place at = place(m);
#pragma unroll
      for (int q = 0; q < 2; ++q)
        *reinterpret_cast<float*>(staging + (at.row + 2 * (lane % 4) + q) * PITCH + at.col_bytes +
                                  4 * (lane / 4)) = v[m][q];
    }
  }
}

// One pass of staging: ROWS rows of ROW_BYTES bytes, PITCH bytes apart. The write-out moves its
// 16-byte chunks, CHUNKS_PER_ROW to a row: thread t chunk t % CHUNKS_PER_ROW of rows
// t / CHUNKS_PER_ROW + i * ROWS_PER_STEP for i < STEPS.
template <int ROW_BYTES, int ROWS, int PITCH_>
struct StagedPass {
  static constexpr int PITCH = PITCH_;
  static constexpr int CHUNKS_PER_ROW = ROW_BYTES / VEC_BYTES;
  static constexpr int ROWS_PER_STEP = WARPGROUP_THREADS / CHUNKS_PER_ROW;
  static constexpr int STEPS = ROWS / ROWS_PER_STEP;
  static_assert(ROW_BYTES % VEC_BYTES == 0 && ROWS % ROWS_PER_STEP == 0, "whole write-out steps");
};

// ---- (3) the 16-byte write-out -----------------------------------------------------------------
template <bool REDUCE, typename OutT>
DEV void write_vec16(OutT* dst, const Vec16& v) {
  if constexpr (REDUCE) {
    red_add_16(dst, v);
  } else {
    st_global_16(dst, v);
  }
}

// Writes a staged pass (geometry P) to the output columns from `first_col` on (those < N): staging
// row r, this thread's i-th, goes to row(i, r) where in_out(i, r) (the others are not output rows).
template <typename P, bool REDUCE, typename OutT, typename InOut, typename Row>
DEV void write_out(const unsigned char* staging, int t, int first_col, int N, InOut&& in_out,
                   Row&& row) {
  const int chunk = t % P::CHUNKS_PER_ROW;
  const int col = first_col + chunk * (VEC_BYTES / (int)sizeof(OutT));
#pragma unroll
  for (int i = 0; i < P::STEPS; ++i) {
    const int r = t / P::CHUNKS_PER_ROW + i * P::ROWS_PER_STEP;
    if (!in_out(i, r) || col >= N) continue;
    const Vec16 v = *reinterpret_cast<const Vec16*>(staging + r * P::PITCH + chunk * VEC_BYTES);
    write_vec16<REDUCE>(row(i, r) + col, v);
  }
}

}  // namespace sm90
