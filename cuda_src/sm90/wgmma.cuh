// Hopper warpgroup MMA (sm_90a): wgmma.mma_async on operands in shared memory with the 128-byte
// swizzle, f32 accumulators in registers: m64nNk16 of bf16 or fp16, either operand K-major or
// MN-major (weights stored [K, N], read in place: ../../../shared/PTX_CRIB.md section 13), and
// m64nNk32 of e4m3, both operands K-major (PTX_CRIB section 12).
#pragma once
#include "../common/ptx.cuh"

DEV void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
DEV void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
DEV void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// Every operand tile is stored in rows of 128 bytes with the 128-byte swizzle, and one wgmma
// reads 32 bytes of K from each row (k16 of a 16-bit type, k32 of e4m3).
constexpr int SW128_ROW_BYTES = 128;
constexpr int MMA_K_BYTES = 32;

// An operand element type's K geometry: a stage's K block is one swizzled K-major row (64 16-bit
// elements, 128 e4m3), issued as MMA_STEPS wgmmas of MMA_K each.
template <typename Elem>
struct Operand {
  static constexpr int BYTES = (int)sizeof(Elem);
  static constexpr int BK = SW128_ROW_BYTES / BYTES;
  static constexpr int MMA_K = MMA_K_BYTES / BYTES;
  static constexpr int MMA_STEPS = BK / MMA_K;
};

// Keeps the compiler from moving reads or writes of accumulators `d` across this point (after
// wgmma_wait, before registers the MMAs wrote are read in C++). No instruction.
template <int N>
DEV void wgmma_fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Shared-memory matrix descriptor of a K-major tile written by TMA with SWIZZLE_128B: rows of 128
// bytes (one K block), 8-row groups 1024 B apart, base 1024-B aligned (base offset 0).
DEV u64 smem_desc_sw128(const void* tile) {
  u64 desc = (u64)((smem_u32(tile) & 0x3FFFF) >> 4);  // bits 0-13: start address >> 4
  desc |= (u64)(16 >> 4) << 16;                       // bits 16-29: leading byte offset (unused)
  desc |= (u64)(1024 >> 4) << 32;                     // bits 32-45: stride byte offset
  desc |= (u64)1 << 62;                               // bits 62-63: 128-byte swizzle
  return desc;
}
// The descriptor of the same tile `step` MMA K steps further on: +32 bytes per step inside the
// swizzled 128-byte row (k16 of a 16-bit type, k32 of e4m3).
DEV u64 smem_desc_advance_kstep(u64 desc, int step) {
  return desc + (u64)((step * MMA_K_BYTES) >> 4);
}

// An MN-major tile written by TMA with SWIZZLE_128B as boxes of 64 M or N (128 B) x 64 K rows, box
// after box along M or N: the leading byte offset is the step between 64-wide blocks (one box), the
// stride byte offset between 8-row K groups, and a K16 step moves 16 K rows (verified exact on an
// H200 for B; A's transpose bit reads the same layout). 16-bit operands only: wgmma has no
// transpose for fp8 (PTX_CRIB section 13).
constexpr int MN_BLOCK = 64;                       // N elements of one 128-byte row
constexpr int MN_BLOCK_BYTES = MN_BLOCK * 64 * 2;  // one 64 x 64 box of 16-bit values
static_assert(MN_BLOCK == Operand<Bf16>::BK, "a box's 64 K rows are a 16-bit K block");
DEV u64 smem_desc_mn_sw128(const void* tile) {
  u64 desc = (u64)((smem_u32(tile) & 0x3FFFF) >> 4);
  desc |= (u64)(MN_BLOCK_BYTES >> 4) << 16;
  desc |= (u64)(1024 >> 4) << 32;
  desc |= (u64)1 << 62;
  return desc;
}
DEV u64 smem_desc_mn_advance_k16(u64 desc, int k16) { return desc + (u64)((k16 * 2048) >> 4); }

// An operand's major order, as a type: its descriptor, the MMA K step, and wgmma's transpose
// immediate for that operand.
template <bool MN>
struct Major {
  static constexpr int TRANS = MN ? 1 : 0;
  DEV static u64 desc(const void* tile) {
    return MN ? smem_desc_mn_sw128(tile) : smem_desc_sw128(tile);
  }
  DEV static u64 advance_kstep(u64 desc, int step) {
    return MN ? smem_desc_mn_advance_k16(desc, step) : smem_desc_advance_kstep(desc, step);
  }
};

// Accumulator fragment (PTX ISA, wgmma D layout): thread t of the warpgroup holds, in register i,
// row 16*(t/32) + (t%32)/4 + 8*((i>>1)&1) and column 8*(i>>2) + 2*(t%4) + (i&1).
#define WGMMA_ACC8(i)                                                                         \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])

// Operand lists of an m64nNk16 with G = N / 16 groups of 8 accumulators: the accumulators'
// placeholders, their constraints, then the placeholders of the two descriptors and the predicate.
#define WGMMA_REGS1 "%0,%1,%2,%3,%4,%5,%6,%7"
#define WGMMA_REGS2 \
  WGMMA_REGS1       \
  ","               \
  "%8,%9,%10,%11,%12,%13,%14,%15"
#define WGMMA_REGS3 \
  WGMMA_REGS2       \
  ","               \
  "%16,%17,%18,%19,%20,%21,%22,%23"
#define WGMMA_REGS4 \
  WGMMA_REGS3       \
  ","               \
  "%24,%25,%26,%27,%28,%29,%30,%31"
#define WGMMA_REGS5 \
  WGMMA_REGS4       \
  ","               \
  "%32,%33,%34,%35,%36,%37,%38,%39"
#define WGMMA_REGS6 \
  WGMMA_REGS5       \
  ","               \
  "%40,%41,%42,%43,%44,%45,%46,%47"
#define WGMMA_REGS7 \
  WGMMA_REGS6       \
  ","               \
  "%48,%49,%50,%51,%52,%53,%54,%55"
#define WGMMA_REGS8 \
  WGMMA_REGS7       \
  ","               \
  "%56,%57,%58,%59,%60,%61,%62,%63"
#define WGMMA_REGS9 \
  WGMMA_REGS8       \
  ","               \
  "%64,%65,%66,%67,%68,%69,%70,%71"
#define WGMMA_REGS10 \
  WGMMA_REGS9        \
  ","                \
  "%72,%73,%74,%75,%76,%77,%78,%79"
#define WGMMA_REGS11 \
  WGMMA_REGS10       \
  ","                \
  "%80,%81,%82,%83,%84,%85,%86,%87"
#define WGMMA_REGS12 \
  WGMMA_REGS11       \
  ","                \
  "%88,%89,%90,%91,%92,%93,%94,%95"
#define WGMMA_REGS13 \
  WGMMA_REGS12       \
  ","                \
  "%96,%97,%98,%99,%100,%101,%102,%103"
#define WGMMA_REGS14 \
  WGMMA_REGS13       \
  ","                \
  "%104,%105,%106,%107,%108,%109,%110,%111"
#define WGMMA_REGS15 \
  WGMMA_REGS14       \
  ","                \
  "%112,%113,%114,%115,%116,%117,%118,%119"
#define WGMMA_REGS16 \
  WGMMA_REGS15       \
  ","                \
  "%120,%121,%122,%123,%124,%125,%126,%127"
#define WGMMA_ACCS1 WGMMA_ACC8(0)
#define WGMMA_ACCS2 WGMMA_ACCS1, WGMMA_ACC8(8)
#define WGMMA_ACCS3 WGMMA_ACCS2, WGMMA_ACC8(16)
#define WGMMA_ACCS4 WGMMA_ACCS3, WGMMA_ACC8(24)
#define WGMMA_ACCS5 WGMMA_ACCS4, WGMMA_ACC8(32)
#define WGMMA_ACCS6 WGMMA_ACCS5, WGMMA_ACC8(40)
#define WGMMA_ACCS7 WGMMA_ACCS6, WGMMA_ACC8(48)
#define WGMMA_ACCS8 WGMMA_ACCS7, WGMMA_ACC8(56)
#define WGMMA_ACCS9 WGMMA_ACCS8, WGMMA_ACC8(64)
#define WGMMA_ACCS10 WGMMA_ACCS9, WGMMA_ACC8(72)
#define WGMMA_ACCS11 WGMMA_ACCS10, WGMMA_ACC8(80)
#define WGMMA_ACCS12 WGMMA_ACCS11, WGMMA_ACC8(88)
#define WGMMA_ACCS13 WGMMA_ACCS12, WGMMA_ACC8(96)
#define WGMMA_ACCS14 WGMMA_ACCS13, WGMMA_ACC8(104)
#define WGMMA_ACCS15 WGMMA_ACCS14, WGMMA_ACC8(112)
#define WGMMA_ACCS16 WGMMA_ACCS15, WGMMA_ACC8(120)
#define WGMMA_DESCS1 "%8, %9"
#define WGMMA_PRED1 "%10"
#define WGMMA_DESCS2 "%16, %17"
#define WGMMA_PRED2 "%18"
#define WGMMA_DESCS3 "%24, %25"
#define WGMMA_PRED3 "%26"
#define WGMMA_DESCS4 "%32, %33"
#define WGMMA_PRED4 "%34"
#define WGMMA_DESCS5 "%40, %41"
#define WGMMA_PRED5 "%42"
#define WGMMA_DESCS6 "%48, %49"
#define WGMMA_PRED6 "%50"
#define WGMMA_DESCS7 "%56, %57"
#define WGMMA_PRED7 "%58"
#define WGMMA_DESCS8 "%64, %65"
#define WGMMA_PRED8 "%66"
#define WGMMA_DESCS9 "%72, %73"
#define WGMMA_PRED9 "%74"
#define WGMMA_DESCS10 "%80, %81"
#define WGMMA_PRED10 "%82"
#define WGMMA_DESCS11 "%88, %89"
#define WGMMA_PRED11 "%90"
#define WGMMA_DESCS12 "%96, %97"
#define WGMMA_PRED12 "%98"
#define WGMMA_DESCS13 "%104, %105"
#define WGMMA_PRED13 "%106"
#define WGMMA_DESCS14 "%112, %113"
#define WGMMA_PRED14 "%114"
#define WGMMA_DESCS15 "%120, %121"
#define WGMMA_PRED15 "%122"
#define WGMMA_DESCS16 "%128, %129"
#define WGMMA_PRED16 "%130"

// D[64 x N] (+)= A[64 x 16] * B[N x 16]^T on the first N / 2 registers of `d`; `accumulate`
// false overwrites D. Issued by a warpgroup. N is any multiple of 16 up to 256 (the swapped
// kernels size N to an expert's rows). TRANS_A, TRANS_B: the operand is MN-major (Major<true>).
template <int N, int TRANS_A, int TRANS_B, typename Tag>
DEV void wgmma_m64nNk16(float* d, u64 a_desc, u64 b_desc, bool accumulate, Tag*);

// D[64 x N] (+)= A[64 x 32] * B[N x 32]^T of e4m3 (Tag E4m3), as wgmma_m64nNk16 otherwise. Both
// operands K-major: fp8 wgmma has no transpose immediates, so its operand list ends after
// imm-scale-a and imm-scale-b. The tensor cores' fp8 sums lose precision as K grows (PTX_CRIB
// section 12): callers start a fresh accumulator per 128-deep K block and promote it into fp32.
template <int N, typename Tag>
DEV void wgmma_m64nNk32(float* d, u64 a_desc, u64 b_desc, bool accumulate, Tag*);

#define WGMMA_DEFINE_MAJOR(N, G, TYPE, TAG, TRANS_A, TRANS_B)                                 \
  template <>                                                                                 \
  DEV void wgmma_m64nNk16<N, TRANS_A, TRANS_B, TAG>(float* d, u64 a_desc, u64 b_desc,         \
                                                    bool accumulate, TAG*) {                  \
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, " WGMMA_PRED##G                        \
                 ", 0;\n\t"                                                                   \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE              \
                 " {" WGMMA_REGS##G "}, " WGMMA_DESCS##G ", p, 1, 1, " #TRANS_A ", " #TRANS_B \
                                                         ";\n\t}"                             \
                 : WGMMA_ACCS##G                                                              \
                 : "l"(a_desc), "l"(b_desc), "r"((u32)accumulate));                           \
  }
#define WGMMA_DEFINE_K16(N, G, TYPE, TAG)   \
  WGMMA_DEFINE_MAJOR(N, G, TYPE, TAG, 0, 0) \
  WGMMA_DEFINE_MAJOR(N, G, TYPE, TAG, 0, 1) \
  WGMMA_DEFINE_MAJOR(N, G, TYPE, TAG, 1, 0)
#define WGMMA_DEFINE_K32(N, G, TYPE, TAG)                                                    \
  template <>                                                                                \
  DEV void wgmma_m64nNk32<N, TAG>(float* d, u64 a_desc, u64 b_desc, bool accumulate, TAG*) { \
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, " WGMMA_PRED##G                       \
                 ", 0;\n\t"                                                                  \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32." TYPE "." TYPE             \
                 " {" WGMMA_REGS##G "}, " WGMMA_DESCS##G ", p, 1, 1;\n\t}"                   \
                 : WGMMA_ACCS##G                                                             \
                 : "l"(a_desc), "l"(b_desc), "r"((u32)accumulate));                          \
  }

// Every N = 16 G (G = 1..16) of one element type: DEFINE(N, G, TYPE, TAG).
// clang-format off
#define WGMMA_FOR_EACH_N(DEFINE, TYPE, TAG)                                                  \
  DEFINE(16, 1, TYPE, TAG)    DEFINE(32, 2, TYPE, TAG)    DEFINE(48, 3, TYPE, TAG)         \
  DEFINE(64, 4, TYPE, TAG)    DEFINE(80, 5, TYPE, TAG)    DEFINE(96, 6, TYPE, TAG)         \
  DEFINE(112, 7, TYPE, TAG)   DEFINE(128, 8, TYPE, TAG)   DEFINE(144, 9, TYPE, TAG)        \
  DEFINE(160, 10, TYPE, TAG)  DEFINE(176, 11, TYPE, TAG)  DEFINE(192, 12, TYPE, TAG)       \
  DEFINE(208, 13, TYPE, TAG)  DEFINE(224, 14, TYPE, TAG)  DEFINE(240, 15, TYPE, TAG)       \
  DEFINE(256, 16, TYPE, TAG)
// clang-format on

WGMMA_FOR_EACH_N(WGMMA_DEFINE_K16, "bf16", Bf16)
WGMMA_FOR_EACH_N(WGMMA_DEFINE_K16, "f16", F16)
WGMMA_FOR_EACH_N(WGMMA_DEFINE_K32, "e4m3", E4m3)
