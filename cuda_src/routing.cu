// Routing: top-k softmax of router logits, and the routing plan (expert offsets, permutation maps,
// per-tile schedule) built on the device with no host synchronisation.
//
// Plan pipeline over the T*k expanded indices i = t*k + j, in chunks of PLAN_CHUNK:
//   1. plan_rank:          rank[i] = #earlier entries of the same chunk routed to the same expert;
//                          the last such entry writes the chunk's count to chunk_count[e][chunk].
//                          Its blocks also fill tile_expert and permuted_to_expanded with -1.
//   2. plan_scan_chunks:   per expert, exclusive scan of chunk_count over chunks (in place) and the
//                          expert's total.
//   3. plan_expert_offsets: scan of the experts' totals padded to tile_m -> expert_offsets, and the
//                          tile schedule tile_expert[tile].
//   4. plan_scatter:       permuted row of i = expert_offsets[e] + chunk_count[e][chunk] + rank[i].
// Smaller plans take one launch instead of four: plan_small (at most PLAN_CHUNK entries) or
// plan_one_block (at most PLAN_BLOCK_PASSES * PLAN_BLOCK_THREADS entries, PLAN_BLOCK_EXPERTS local
// experts). moefuse/kernels.py picks one by the crossovers measured (docs/DESIGN.md D9).
// The order inside an expert's segment is ascending expanded index, so the plan is deterministic.
#include "common/ptx.cuh"
#include "common/spec.cuh"

constexpr int PLAN_CHUNK = 512;  // entries per plan_rank / plan_scatter block
constexpr int SCAN_THREADS = 1024;
constexpr int PLAN_BLOCK_THREADS = 1024;  // at most; a multiple of 32 (fewer for small batches)
constexpr int PLAN_BLOCK_PASSES = 4;      // entries per thread, at most
constexpr int PLAN_BLOCK_EXPERTS = 256;
constexpr int TOPK_WARPS = 8;
constexpr int ANY_NUMBER = 0x7fffffff;  // a published limit that does not apply

DEV int warp_inclusive_scan(int v) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const int other = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += other;
  }
  return v;
}

// Exclusive scan of one value per thread over the block; returns the block total in `total`.
// Needs SCAN_THREADS / 32 ints of shared scratch; callable repeatedly (it syncs before reuse).
DEV int block_exclusive_scan(int v, int* scratch, int& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int inclusive = warp_inclusive_scan(v);
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int s = lane < warps ? scratch[lane] : 0;
    const int s_incl = warp_inclusive_scan(s);
    if (lane < warps) scratch[lane] = s_incl - s;
    if (lane == 31) scratch[32] = s_incl;
  }
  __syncthreads();
  total = scratch[32];
  return scratch[warp] + inclusive - v;
}

template <typename IdT>
DEV int local_expert(const IdT* ids, int i, int first_expert, int num_local) {
  const i64 e = (i64)ids[i] - first_expert;
  return (e >= 0 && e < num_local) ? (int)e : -1;
}

// Rank of entry `self` (expert e >= 0) among the n entries of `experts` routed to the same expert,
// and whether it is the last of them.
DEV int rank_in_chunk(const int* experts, int n, int self, int e, bool& last) {
  int before = 0;
  last = true;
  for (int j = 0; j < n; ++j) {
    const bool same = experts[j] == e;
    before += same && j < self;
    last = last && !(same && j > self);
  }
  return before;
}

// Entry i of local expert e (-1: routed elsewhere) takes row `rank` of e's segment.
DEV void place_entry(int i, int e, int rank, const int* __restrict__ expert_offsets,
                     int* __restrict__ permuted_to_expanded,
                     int* __restrict__ expanded_to_permuted) {
  const int p = e >= 0 ? expert_offsets[e] + rank : -1;
  if (e >= 0) permuted_to_expanded[p] = i;
  expanded_to_permuted[i] = p;
}

DEV void fill_unrouted(int* tile_expert, int max_tiles, int* permuted_to_expanded, int capacity,
                       int thread, int threads) {
  for (int t = thread; t < max_tiles; t += threads) tile_expert[t] = -1;
  for (int p = thread; p < capacity; p += threads) permuted_to_expanded[p] = -1;
}

template <typename IdT>
DEV void plan_rank(const IdT* __restrict__ topk_ids, int n_expanded, int first_expert,
                   int num_local, int num_chunks, int* __restrict__ rank,
                   int* __restrict__ chunk_count, int* __restrict__ tile_expert, int max_tiles,
                   int* __restrict__ permuted_to_expanded, int capacity) {
  __shared__ int experts[PLAN_CHUNK];
  fill_unrouted(tile_expert, max_tiles, permuted_to_expanded, capacity,
                blockIdx.x * PLAN_CHUNK + threadIdx.x, gridDim.x * PLAN_CHUNK);
  for (int e = threadIdx.x; e < num_local; e += PLAN_CHUNK) {
    chunk_count[(i64)e * num_chunks + blockIdx.x] = 0;
  }
  const int base = blockIdx.x * PLAN_CHUNK, i = base + threadIdx.x;
  const int n = min(PLAN_CHUNK, n_expanded - base);
  const int e = i < n_expanded ? local_expert(topk_ids, i, first_expert, num_local) : -1;
  experts[threadIdx.x] = e;
  __syncthreads();
  if (e < 0) return;
  bool last;
  rank[i] = rank_in_chunk(experts, n, threadIdx.x, e, last);
  if (last) chunk_count[(i64)e * num_chunks + blockIdx.x] = rank[i] + 1;
}

#define MOEFUSE_PLAN_RANK_ENTRY(NAME, IDS)                                                      \
  MOEFUSE_KERNEL(NAME, PLAN_CHUNK, 1, "op=plan_rank ids=" #IDS,                                 \
                 (const IDS* topk_ids, int n_expanded, int first_expert, int num_local,         \
                  int num_chunks, int* rank, int* chunk_count, int* tile_expert, int max_tiles, \
                  int* permuted_to_expanded, int capacity),                                     \
                 {"entries_per_block", PLAN_CHUNK}) {                                           \
    plan_rank(topk_ids, n_expanded, first_expert, num_local, num_chunks, rank, chunk_count,     \
              tile_expert, max_tiles, permuted_to_expanded, capacity);                          \
  }
MOEFUSE_PLAN_RANK_ENTRY(plan_rank_i32, i32)
MOEFUSE_PLAN_RANK_ENTRY(plan_rank_i64, i64)

// One block per expert: chunk_count[e][:] becomes its exclusive prefix; expert_counts[e] the total.
MOEFUSE_KERNEL(plan_scan_chunks, SCAN_THREADS, 1, "op=plan_scan_chunks",
               (int* chunk_count, int num_chunks, int* expert_counts)) {
  __shared__ int scratch[33];
  int* row = chunk_count + (i64)blockIdx.x * num_chunks;
  int carry = 0;
  for (int c0 = 0; c0 < num_chunks; c0 += SCAN_THREADS) {
    const int c = c0 + threadIdx.x;
    const int v = c < num_chunks ? row[c] : 0;
    int total;
    const int prefix = block_exclusive_scan(v, scratch, total);
    if (c < num_chunks) row[c] = carry + prefix;
    carry += total;
  }
  if (threadIdx.x == 0) expert_counts[blockIdx.x] = carry;
}

// Whole block: expert_offsets[e] = sum over e' < e of expert_counts[e'] rounded up to tile_m,
// and tile_expert[t] = e for each of expert e's tiles.
DEV void write_expert_offsets(const int* expert_counts, int num_local, int tile_m,
                              int* expert_offsets, int* tile_expert, int* scratch) {
  int carry = 0;
  for (int e0 = 0; e0 < num_local; e0 += blockDim.x) {
    const int e = e0 + threadIdx.x;
    const int tiles = e < num_local ? (expert_counts[e] + tile_m - 1) / tile_m : 0;
    int total;
    const int first_tile = carry + block_exclusive_scan(tiles, scratch, total);
    if (e < num_local) {
      expert_offsets[e] = first_tile * tile_m;
      for (int t = 0; t < tiles; ++t) tile_expert[first_tile + t] = e;
    }
    carry += total;
  }
  if (threadIdx.x == 0) expert_offsets[num_local] = carry * tile_m;
}

MOEFUSE_KERNEL(plan_expert_offsets, SCAN_THREADS, 1, "op=plan_expert_offsets",
               (const int* expert_counts, int num_local, int tile_m, int* expert_offsets,
                int* tile_expert)) {
  __shared__ int scratch[33];
  write_expert_offsets(expert_counts, num_local, tile_m, expert_offsets, tile_expert, scratch);
}

// The whole plan in one block of PLAN_CHUNK threads, each entry ranked and each expert counted by a
// scan over all entries (T*k <= PLAN_CHUNK): the cheapest plan for decode-sized batches.
template <typename IdT>
DEV void plan_small(const IdT* __restrict__ topk_ids, int n_expanded, int first_expert,
                    int num_local, int tile_m, int* __restrict__ expert_counts,
                    int* __restrict__ expert_offsets, int* __restrict__ tile_expert, int max_tiles,
                    int* __restrict__ permuted_to_expanded, int capacity,
                    int* __restrict__ expanded_to_permuted) {
  __shared__ int experts[PLAN_CHUNK];
  __shared__ int scratch[33];
  const int i = threadIdx.x;
  const int e = i < n_expanded ? local_expert(topk_ids, i, first_expert, num_local) : -1;
  experts[i] = e;
  fill_unrouted(tile_expert, max_tiles, permuted_to_expanded, capacity, i, PLAN_CHUNK);
  __syncthreads();
  for (int expert = i; expert < num_local; expert += PLAN_CHUNK) {
    int count = 0;
    for (int j = 0; j < n_expanded; ++j) count += experts[j] == expert;
    expert_counts[expert] = count;
  }
  __syncthreads();
  write_expert_offsets(expert_counts, num_local, tile_m, expert_offsets, tile_expert, scratch);
  __syncthreads();
  if (i >= n_expanded) return;
  bool last;
  const int rank = e >= 0 ? rank_in_chunk(experts, n_expanded, i, e, last) : 0;
  place_entry(i, e, rank, expert_offsets, permuted_to_expanded, expanded_to_permuted);
}

// The one-launch plans' entry points: NAME runs FN in one block of at most THREADS threads, for
// at most MAX_ENTRIES entries and MAX_EXPERTS local experts.
#define MOEFUSE_PLAN_ONE_LAUNCH_ENTRY(NAME, FN, THREADS, MAX_ENTRIES, MAX_EXPERTS, IDS)      \
  MOEFUSE_KERNEL(                                                                            \
      NAME, THREADS, 1, "op=" #FN " ids=" #IDS,                                              \
      (const IDS* topk_ids, int n_expanded, int first_expert, int num_local, int tile_m,     \
       int* expert_counts, int* expert_offsets, int* tile_expert, int max_tiles,             \
       int* permuted_to_expanded, int capacity, int* expanded_to_permuted),                  \
      {"max_entries", MAX_ENTRIES}, {"max_experts", MAX_EXPERTS}) {                          \
    FN(topk_ids, n_expanded, first_expert, num_local, tile_m, expert_counts, expert_offsets, \
       tile_expert, max_tiles, permuted_to_expanded, capacity, expanded_to_permuted);        \
  }
// plan_small counts each expert by a scan over all entries: any number of local experts.
MOEFUSE_PLAN_ONE_LAUNCH_ENTRY(plan_small_i32, plan_small, PLAN_CHUNK, PLAN_CHUNK, ANY_NUMBER, i32)
MOEFUSE_PLAN_ONE_LAUNCH_ENTRY(plan_small_i64, plan_small, PLAN_CHUNK, PLAN_CHUNK, ANY_NUMBER, i64)

// The whole plan in one block of blockDim.x threads (n_expanded <= PLAN_BLOCK_PASSES * blockDim.x).
// Entries are taken blockDim.x at a time in index order; an entry's rank in its expert is the
// expert's count before this pass, plus its count in the earlier warps of this pass (a per-warp
// table, scanned over warps), plus its count in the earlier lanes of its warp (match_any). So ranks
// follow ascending expanded index, as in the multi-kernel plan.
template <typename IdT>
DEV void plan_one_block(const IdT* __restrict__ topk_ids, int n_expanded, int first_expert,
                        int num_local, int tile_m, int* __restrict__ expert_counts,
                        int* __restrict__ expert_offsets, int* __restrict__ tile_expert,
                        int max_tiles, int* __restrict__ permuted_to_expanded, int capacity,
                        int* __restrict__ expanded_to_permuted) {
  __shared__ int warp_counts[PLAN_BLOCK_THREADS / 32 * PLAN_BLOCK_EXPERTS];  // [warp][expert]
  __shared__ int counted[PLAN_BLOCK_EXPERTS];  // per expert, entries of earlier passes
  __shared__ int scratch[33];
  const int threads = blockDim.x, warps = threads / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  fill_unrouted(tile_expert, max_tiles, permuted_to_expanded, capacity, threadIdx.x, threads);
  for (int e = threadIdx.x; e < num_local; e += threads) counted[e] = 0;
  int expert[PLAN_BLOCK_PASSES], rank[PLAN_BLOCK_PASSES];
#pragma unroll
  for (int pass = 0; pass < PLAN_BLOCK_PASSES; ++pass) {
    expert[pass] = -1;
    if (pass * threads >= n_expanded) continue;  // uniform across the block
    const int i = pass * threads + threadIdx.x;
    const int e = i < n_expanded ? local_expert(topk_ids, i, first_expert, num_local) : -1;
    for (int c = threadIdx.x; c < warps * num_local; c += threads) warp_counts[c] = 0;
    __syncthreads();
    const u32 same = __match_any_sync(0xffffffffu, e);
    const int in_warp = __popc(same & ((1u << lane) - 1));
    if (e >= 0 && in_warp == 0) warp_counts[warp * num_local + e] = __popc(same);
    __syncthreads();
    for (int x = threadIdx.x; x < num_local; x += threads) {
      int before = counted[x];
#pragma unroll 1
      for (int w = 0; w < warps; ++w) {
        const int n = warp_counts[w * num_local + x];
        warp_counts[w * num_local + x] = before;
        before += n;
      }
      counted[x] = before;
    }
    __syncthreads();
    expert[pass] = e;
    rank[pass] = e >= 0 ? warp_counts[warp * num_local + e] + in_warp : 0;
    __syncthreads();  // the next pass clears the table
  }
  for (int e = threadIdx.x; e < num_local; e += threads) expert_counts[e] = counted[e];
  __syncthreads();
  write_expert_offsets(expert_counts, num_local, tile_m, expert_offsets, tile_expert, scratch);
  __syncthreads();
#pragma unroll
  for (int pass = 0; pass < PLAN_BLOCK_PASSES; ++pass) {
    const int i = pass * threads + threadIdx.x;
    if (i < n_expanded)
      place_entry(i, expert[pass], rank[pass], expert_offsets, permuted_to_expanded,
                  expanded_to_permuted);
  }
}

MOEFUSE_PLAN_ONE_LAUNCH_ENTRY(plan_one_block_i32, plan_one_block, PLAN_BLOCK_THREADS,
                              PLAN_BLOCK_PASSES* PLAN_BLOCK_THREADS, PLAN_BLOCK_EXPERTS, i32)
MOEFUSE_PLAN_ONE_LAUNCH_ENTRY(plan_one_block_i64, plan_one_block, PLAN_BLOCK_THREADS,
                              PLAN_BLOCK_PASSES* PLAN_BLOCK_THREADS, PLAN_BLOCK_EXPERTS, i64)

template <typename IdT>
DEV void plan_scatter(const IdT* __restrict__ topk_ids, int n_expanded, int first_expert,
                      int num_local, int num_chunks, const int* __restrict__ rank,
                      const int* __restrict__ chunk_prefix, const int* __restrict__ expert_offsets,
                      int* __restrict__ permuted_to_expanded,
                      int* __restrict__ expanded_to_permuted) {
  const int i = blockIdx.x * PLAN_CHUNK + threadIdx.x;
  if (i >= n_expanded) return;
  const int e = local_expert(topk_ids, i, first_expert, num_local);
  const int row = e >= 0 ? chunk_prefix[(i64)e * num_chunks + blockIdx.x] + rank[i] : 0;
  place_entry(i, e, row, expert_offsets, permuted_to_expanded, expanded_to_permuted);
}

#define MOEFUSE_PLAN_SCATTER_ENTRY(NAME, IDS)                                                  \
  MOEFUSE_KERNEL(                                                                              \
      NAME, PLAN_CHUNK, 1, "op=plan_scatter ids=" #IDS,                                        \
      (const IDS* topk_ids, int n_expanded, int first_expert, int num_local, int num_chunks,   \
       const int* rank, const int* chunk_count, const int* expert_offsets,                     \
       int* permuted_to_expanded, int* expanded_to_permuted),                                  \
      {"entries_per_block", PLAN_CHUNK}) {                                                     \
    plan_scatter(topk_ids, n_expanded, first_expert, num_local, num_chunks, rank, chunk_count, \
                 expert_offsets, permuted_to_expanded, expanded_to_permuted);                  \
  }
MOEFUSE_PLAN_SCATTER_ENTRY(plan_scatter_i32, i32)
MOEFUSE_PLAN_SCATTER_ENTRY(plan_scatter_i64, i64)

// One warp per token: softmax over E logits, then the k largest (ties to the lower expert id),
// found one at a time as the largest key strictly below the previous pick. O(k * E / 32) per warp.
// NaN logits give an unspecified choice. Logits are read in their own type (fp32, bf16 or fp16),
// so routing a model's bf16 logits needs no converted copy (nor a temporary under graph capture).
template <typename Logit>
DEV void topk_softmax(const Logit* __restrict__ logits, int num_tokens, int num_experts, int k,
                      int renormalize, float* __restrict__ topk_weights,
                      int* __restrict__ topk_ids) {
  const int lane = threadIdx.x % 32;
  const int t = blockIdx.x * TOPK_WARPS + threadIdx.x / 32;
  if (t >= num_tokens) return;
  const Logit* row = logits + (i64)t * num_experts;

  float row_max = -positive_inf();
  for (int e = lane; e < num_experts; e += 32) row_max = fmaxf(row_max, to_float(row[e]));
#pragma unroll
  for (int d = 16; d > 0; d /= 2)
    row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, d));
  float denom = 0.0f;
  for (int e = lane; e < num_experts; e += 32) denom += __expf(to_float(row[e]) - row_max);
#pragma unroll
  for (int d = 16; d > 0; d /= 2) denom += __shfl_xor_sync(0xffffffffu, denom, d);

  float prev_value = positive_inf();
  int prev_id = -1;
  float picked_sum = 0.0f;
  float* weights_out = topk_weights + (i64)t * k;
  for (int j = 0; j < k; ++j) {
    float best = -positive_inf();
    int best_id = num_experts;
    for (int e = lane; e < num_experts; e += 32) {
      const float v = to_float(row[e]);
      const bool below_prev = v < prev_value || (v == prev_value && e > prev_id);
      if (below_prev && (v > best || (v == best && e < best_id))) {
        best = v;
        best_id = e;
      }
    }
#pragma unroll
    for (int d = 16; d > 0; d /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, d);
      const int other_id = __shfl_xor_sync(0xffffffffu, best_id, d);
      if (other > best || (other == best && other_id < best_id)) {
        best = other;
        best_id = other_id;
      }
    }
    const float weight = __expf(best - row_max) / denom;
    picked_sum += weight;
    if (lane == 0) {
      weights_out[j] = weight;
      topk_ids[(i64)t * k + j] = best_id;
    }
    prev_value = best;
    prev_id = best_id;
  }
  if (!renormalize) return;
  __syncwarp();
  for (int j = lane; j < k; j += 32) weights_out[j] /= picked_sum;
}

#define MOEFUSE_TOPK_ENTRY(NAME, LOGIT, TAG)                                                    \
  MOEFUSE_KERNEL(NAME, TOPK_WARPS * 32, 1, "op=topk_softmax logits=" #TAG,                      \
                 (const LOGIT* logits, int num_tokens, int num_experts, int k, int renormalize, \
                  float* topk_weights, int* topk_ids),                                          \
                 {"tokens_per_block", TOPK_WARPS}) {                                            \
    topk_softmax(logits, num_tokens, num_experts, k, renormalize, topk_weights, topk_ids);      \
  }
MOEFUSE_TOPK_ENTRY(topk_softmax_f32, float, f32)
MOEFUSE_TOPK_ENTRY(topk_softmax_bf16, Bf16, bf16)
MOEFUSE_TOPK_ENTRY(topk_softmax_f16, F16, f16)
