// Hopper warpgroup MMA (sm_90a): wgmma.mma_async m64nNk16, both operands K-major in shared memory
// with the 128-byte swizzle, f32 accumulators in registers.
#pragma once
#include "../common/ptx.cuh"

DEV void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
DEV void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
DEV void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// Shared-memory matrix descriptor of a K-major tile written by TMA with SWIZZLE_128B: rows of 64
// 16-bit elements (128 B), 8-row groups 1024 B apart, base 1024-B aligned (base offset 0).
DEV u64 smem_desc_sw128(const void* tile) {
  u64 desc = (u64)((smem_u32(tile) & 0x3FFFF) >> 4);  // bits 0-13: start address >> 4
  desc |= (u64)(16 >> 4) << 16;                       // bits 16-29: leading byte offset (unused)
  desc |= (u64)(1024 >> 4) << 32;                     // bits 32-45: stride byte offset
  desc |= (u64)1 << 62;                               // bits 62-63: 128-byte swizzle
  return desc;
}
// The descriptor of the same tile K16 further on: +32 bytes inside the swizzled 128-byte row.
DEV u64 smem_desc_advance_k16(u64 desc, int k16) { return desc + (u64)((k16 * 32) >> 4); }

// Accumulator fragment (PTX ISA, wgmma D layout): thread t of the warpgroup holds, in register i,
// row 16*(t/32) + (t%32)/4 + 8*((i>>1)&1) and column 8*(i>>2) + 2*(t%4) + (i&1).
#define WGMMA_ACC8(i)                                                                         \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])

#define WGMMA_OPERANDS_N64                                 \
  "{"                                                      \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15," \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}"
#define WGMMA_ACCS_N64 WGMMA_ACC8(0), WGMMA_ACC8(8), WGMMA_ACC8(16), WGMMA_ACC8(24)
#define WGMMA_DESCS_N64 "%32, %33"
#define WGMMA_PRED_N64 "%34"
#define WGMMA_OPERANDS_N128                                          \
  "{"                                                                \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"           \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31," \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47," \
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
#define WGMMA_ACCS_N128                                                                         \
  WGMMA_ACC8(0), WGMMA_ACC8(8), WGMMA_ACC8(16), WGMMA_ACC8(24), WGMMA_ACC8(32), WGMMA_ACC8(40), \
      WGMMA_ACC8(48), WGMMA_ACC8(56)
#define WGMMA_DESCS_N128 "%64, %65"
#define WGMMA_PRED_N128 "%66"
#define WGMMA_OPERANDS_N256                                                      \
  "{"                                                                            \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                       \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"             \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"             \
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,"             \
  "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,"             \
  "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"             \
  "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111," \
  "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127}"
#define WGMMA_ACCS_N256                                                                         \
  WGMMA_ACC8(0), WGMMA_ACC8(8), WGMMA_ACC8(16), WGMMA_ACC8(24), WGMMA_ACC8(32), WGMMA_ACC8(40), \
      WGMMA_ACC8(48), WGMMA_ACC8(56), WGMMA_ACC8(64), WGMMA_ACC8(72), WGMMA_ACC8(80),           \
      WGMMA_ACC8(88), WGMMA_ACC8(96), WGMMA_ACC8(104), WGMMA_ACC8(112), WGMMA_ACC8(120)
#define WGMMA_DESCS_N256 "%128, %129"
#define WGMMA_PRED_N256 "%130"

// D[64 x N] (+)= A[64 x 16] * B[N x 16]^T; `accumulate` false overwrites D. Issued by a warpgroup.
#define WGMMA_DEFINE(N, TYPE, TAG)                                                                \
  DEV void wgmma_m64n##N##k16(float (&d)[N / 2], u64 a_desc, u64 b_desc, bool accumulate, TAG*) { \
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, " WGMMA_PRED_N##N                          \
                 ", 0;\n\t"                                                                       \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE                  \
                 " " WGMMA_OPERANDS_N##N ", " WGMMA_DESCS_N##N ", p, 1, 1, 0, 0;\n\t}"            \
                 : WGMMA_ACCS_N##N                                                                \
                 : "l"(a_desc), "l"(b_desc), "r"((u32)accumulate));                               \
  }

WGMMA_DEFINE(64, "bf16", Bf16)
WGMMA_DEFINE(64, "f16", F16)
WGMMA_DEFINE(128, "bf16", Bf16)
WGMMA_DEFINE(128, "f16", F16)
WGMMA_DEFINE(256, "bf16", Bf16)
WGMMA_DEFINE(256, "f16", F16)

// The m64nNk16 of a compile-time N, so kernels can be templated on their tile width.
template <int N, typename Tag>
DEV void wgmma_m64nNk16(float (&d)[N / 2], u64 a_desc, u64 b_desc, bool accumulate, Tag* tag) {
  if constexpr (N == 64) {
    wgmma_m64n64k16(d, a_desc, b_desc, accumulate, tag);
  } else if constexpr (N == 128) {
    wgmma_m64n128k16(d, a_desc, b_desc, accumulate, tag);
  } else {
    static_assert(N == 256, "N in {64, 128, 256}");
    wgmma_m64n256k16(d, a_desc, b_desc, accumulate, tag);
  }
}
