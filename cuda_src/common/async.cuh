// Hopper-and-newer asynchronous machinery (sm_90+): mbarriers, TMA bulk tensor copies, proxy
// fences, named barriers, register reallocation. Each wrapper is one PTX instruction.
#pragma once
#include "ptx.cuh"

// ---- mbarrier -----------------------------------------------------------------------------------
DEV void mbar_init(u64* bar, u32 arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(arrivals)
               : "memory");
}
// Makes the inits visible to the async proxy (TMA); follow with a CTA-wide barrier.
DEV void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
DEV void mbar_arrive(u64* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}
// expect `bytes` of TMA traffic on `bar`, then arrive once.
DEV void mbar_arrive_expect_tx(u64* bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}
// expect `bytes` more of TMA traffic on `bar` without arriving (a second load into the stage).
DEV void mbar_expect_tx(u64* bar, u32 bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}
DEV bool mbar_try_wait(u64* bar, u32 parity) {
  u32 done;
  asm volatile(
      "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
      "selp.u32 %0, 1, 0, p;\n\t}"
      : "=r"(done)
      : "r"(smem_u32(bar)), "r"(parity)
      : "memory");
  return done != 0;
}
// One arrival on `bar` once every cp.async this thread issued so far has landed (counted in the
// barrier's init count: no pending-count increment).
DEV void cp_async_mbar_arrive_noinc(u64* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(smem_u32(bar))
               : "memory");
}
// Wait until the phase with parity `parity` has completed.
DEV void mbar_wait(u64* bar, u32 parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// A ring of STAGES slots: the slot index and the phase parity, advanced in one place.
template <int STAGES>
struct RingState {
  u32 stage = 0, phase = 0;
  DEV void advance() {
    if (++stage == STAGES) {
      stage = 0;
      phase ^= 1u;
    }
  }
};

// ---- TMA ----------------------------------------------------------------------------------------
// Bit-compatible stand-in for CUtensorMap (encoded on the host, passed by value).
struct alignas(64) TmaDesc {
  u64 opaque[16];
};
static_assert(sizeof(TmaDesc) == 128, "CUtensorMap is 128 bytes");

DEV void tma_prefetch_desc(const TmaDesc* desc) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(desc) : "memory");
}
// Box at (c0 = innermost element index, c1 = row) into `smem_dst`; its bytes complete on `bar`.
// Out-of-bounds elements arrive as zeros and still count towards the transaction bytes.
DEV void tma_load_2d(void* smem_dst, const TmaDesc* desc, u64* bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4}], [%2];" ::"r"(smem_u32(smem_dst)),
      "l"(desc), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
      : "memory");
}

// The 3-D and 4-D boxes at coordinates (c0 innermost, ...), laid out in shared memory innermost
// first.
DEV void tma_load_3d(void* smem_dst, const TmaDesc* desc, u64* bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(smem_u32(smem_dst)),
      "l"(desc), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
DEV void tma_load_4d(void* smem_dst, const TmaDesc* desc, u64* bar, int c0, int c1, int c2,
                     int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6}], [%2];" ::"r"(smem_u32(smem_dst)),
      "l"(desc), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// The 5-D box at coordinates (c0 innermost, ..., c4), laid out in shared memory innermost first.
DEV void tma_load_5d(void* smem_dst, const TmaDesc* desc, u64* bar, int c0, int c1, int c2, int c3,
                     int c4) {
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6, %7}], [%2];" ::"r"(smem_u32(smem_dst)),
      "l"(desc), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4)
      : "memory");
}

// ---- fences, barriers, registers ----------------------------------------------------------------
// Orders this thread's generic-proxy shared-memory writes before later async-proxy reads.
DEV void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
DEV void named_barrier_sync(u32 id, u32 threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
template <u32 REGS>
DEV void regs_dealloc() {
  static_assert(REGS >= 24 && REGS <= 256 && REGS % 8 == 0, "setmaxnreg range");
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(REGS));
}
template <u32 REGS>
DEV void regs_alloc() {
  static_assert(REGS >= 24 && REGS <= 256 && REGS % 8 == 0, "setmaxnreg range");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(REGS));
}

// ---- stmatrix --------------------------------------------------------------------------------
// Four 8x8 16-bit matrices, each given as the mma fragment (thread l: row l/4, columns 2(l%4) and
// 2(l%4)+1 packed in r[i]), stored transposed: fragment column c goes to the 16-byte row whose
// address lane 8i + c passes.
DEV void stmatrix_x4_trans(void* smem_row, u32 r0, u32 r1, u32 r2, u32 r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(
                   smem_u32(smem_row)),
               "r"(r0), "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}

// ---- 16-byte global stores and reductions ------------------------------------------------------
DEV void st_global_16(void* gmem, const Vec16& v) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(gmem), "r"(v.w[0]), "r"(v.w[1]),
               "r"(v.w[2]), "r"(v.w[3])
               : "memory");
}
DEV void red_add_16(Bf16* gmem, const Vec16& v) {
  asm volatile("red.global.add.noftz.v4.bf16x2 [%0], {%1, %2, %3, %4};" ::"l"(gmem), "r"(v.w[0]),
               "r"(v.w[1]), "r"(v.w[2]), "r"(v.w[3])
               : "memory");
}
DEV void red_add_16(F16* gmem, const Vec16& v) {
  asm volatile("red.global.add.noftz.v4.f16x2 [%0], {%1, %2, %3, %4};" ::"l"(gmem), "r"(v.w[0]),
               "r"(v.w[1]), "r"(v.w[2]), "r"(v.w[3])
               : "memory");
}
DEV void red_add_16(float* gmem, const Vec16& v) {
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(gmem),
               "f"(__uint_as_float(v.w[0])), "f"(__uint_as_float(v.w[1])),
               "f"(__uint_as_float(v.w[2])), "f"(__uint_as_float(v.w[3]))
               : "memory");
}
