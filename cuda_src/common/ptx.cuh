// Small device helpers over inline PTX, so kernels read as algorithms. NVRTC compiles these with no
// CUDA headers at all: the 16-bit float types are plain `u16` bit patterns converted through `cvt`.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int i32;
typedef long long i64;

#define DEV __device__ __forceinline__

DEV u32 smem_u32(const void* ptr) { return (u32)__cvta_generic_to_shared(ptr); }

// ---- 16-bit floats ------------------------------------------------------------------------------
// `Bf16` and `F16` tag the element type; both are stored as raw 16-bit patterns.
struct Bf16 {
  u16 bits;
};
struct F16 {
  u16 bits;
};
// `E4m3` tags fp8 e4m3 (float8_e4m3fn) operands, stored as raw bytes (made by pack_e4m3x2 below).
struct E4m3 {
  u8 bits;
};

DEV float to_float(Bf16 v) { return __uint_as_float((u32)v.bits << 16); }
DEV float to_float(F16 v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
  return f;
}
DEV float to_float(float v) { return v; }

// cvt puts its first source in the upper half, so pack(lo, hi) keeps `lo` in bits 0-15.
DEV u32 pack2(Bf16*, float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
DEV u32 pack2(F16*, float lo, float hi) {
  u32 r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
// Two floats as e4m3 (fp8 e4m3fn, sm_89+): to nearest, ties to even; a magnitude beyond 448 (the
// PTX ISA's MAX_NORM, inf included) to +-448, NaN to NaN (satfinite). As pack2, `lo` lands in bits
// 0-7.
DEV u16 pack_e4m3x2(float lo, float hi) {
  u16 r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
}
DEV float2 unpack2(Bf16*, u32 v) {
  return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
}
DEV float2 unpack2(F16*, u32 v) {
  float lo, hi;
  asm("{\n\t.reg .f16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.f32.f16 %0, l;\n\tcvt.f32.f16 %1, h;\n\t}"
      : "=f"(lo), "=f"(hi)
      : "r"(v));
  return make_float2(lo, hi);
}

// 16 bytes moved as one vector (8 16-bit elements or 4 floats).
struct alignas(16) Vec16 {
  u32 w[4];
};

// ---- cp.async (sm_80+) --------------------------------------------------------------------------
// 16-byte global->shared copy; `src_bytes` < 16 zero-fills the rest (0 gives a zero row for
// masking).
DEV void cp_async_16(void* smem_dst, const void* gmem_src, u32 src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(smem_dst)),
               "l"(gmem_src), "r"(src_bytes)
               : "memory");
}
// 4-byte global->shared copy (fp8 activation scales staged beside their rows).
DEV void cp_async_4(void* smem_dst, const void* gmem_src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_u32(smem_dst)), "l"(gmem_src)
               : "memory");
}
DEV void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
DEV void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// ---- ldmatrix / mma.sync ------------------------------------------------------------------------
DEV void ldmatrix_x4(u32 (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_row)));
}

// D(16x8, f32) += A(16x16, row) * B(16x8, col); fragments as in the PTX ISA's m16n8k16 figures.
#define MMA_16816_DEFINE(TAG, TYPE)                                                     \
  DEV void mma_16816(float (&d)[4], const u32(&a)[4], u32 b0, u32 b1, TAG*) {           \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE                 \
                 ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                       \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));       \
  }
MMA_16816_DEFINE(Bf16, "bf16")
MMA_16816_DEFINE(F16, "f16")

// ---- global reductions (fire and forget; address aligned to the access size) --------------------
// Vector f32 and bf16x2 `red` need sm_90; sm_80 falls back to scalar f32 adds and a CAS loop.
DEV void red_add2(Bf16* gmem, float lo, float hi) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.noftz.bf16x2 [%0], %1;" ::"l"(gmem), "r"(pack2(gmem, lo, hi))
               : "memory");
#else
  // The addend is rounded to bf16 first, as the sm_90 instruction takes it: two adds onto zero
  // then commute (round(round(a) + round(b))), which the k <= 2 reproducibility rests on.
  const float2 add = unpack2(gmem, pack2(gmem, lo, hi));
  u32* word = reinterpret_cast<u32*>(gmem);
  u32 seen = *word, assumed;
  do {
    assumed = seen;
    const float2 cur = unpack2(gmem, assumed);
    seen = atomicCAS(word, assumed, pack2(gmem, cur.x + add.x, cur.y + add.y));
  } while (seen != assumed);
#endif
}
DEV void red_add2(F16* gmem, float lo, float hi) {
  asm volatile("red.global.add.noftz.f16x2 [%0], %1;" ::"l"(gmem), "r"(pack2(gmem, lo, hi))
               : "memory");
}
DEV void red_add2(float* gmem, float lo, float hi) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(gmem), "f"(lo), "f"(hi) : "memory");
#else
  asm volatile("red.global.add.f32 [%0], %1;" ::"l"(gmem), "f"(lo) : "memory");
  asm volatile("red.global.add.f32 [%0], %1;" ::"l"(gmem + 1), "f"(hi) : "memory");
#endif
}

DEV float positive_inf() { return __int_as_float(0x7f800000); }
