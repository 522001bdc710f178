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
constexpr int ROUTE_WARPS = 8;          // tokens per router block, one warp each
constexpr int ROUTE_MAX_GROUPS = 32;    // the sigmoid router's n_group: one group per lane
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

// ---- Routers -----------------------------------------------------------------------------------
// One warp per token picks the k largest keys, ties to the lower expert id, one at a time as the
// largest key strictly below the previous pick: O(k * E / 32) per warp, for any E and k <= E. The
// router says what an expert's key is and what weight a pick gets:
//   softmax       key: the logit; weight: softmax over all E logits (Mixtral, Qwen3-MoE)
//   topk_softmax  key: the logit; weights: softmax over the k picked logits (gpt-oss)
//   sigmoid       key: sigmoid(logit) + correction_bias, -inf outside the topk_group groups kept
//                 (by the sum of each group's two largest keys); weight: sigmoid(logit)
//                 (DeepSeek-V3)
// then divided by their sum when renormalizing (sigmoid: the sum + 1e-20) and multiplied by
// scaling_factor. Each float operation is the one transformers' router runs on CUDA, in the same
// order, so the weights are its bits (docs/DESIGN.md D26): expf (not __expf) and IEEE divisions,
// sums in torch's order (warp_sum), and the sigmoid router's picks written in the order
// torch.topk(sorted=False) leaves them, which is the order its renormalizing sum adds them in.
// NaN logits give an unspecified choice. Logits are read in their own type (fp32, bf16 or fp16),
// so routing a model's bf16 logits needs no converted copy (nor a temporary under graph capture).
enum class Router { softmax, topk_softmax, sigmoid };

constexpr u32 FULL_WARP = 0xffffffffu;

// torch's sigmoid for fp32 (1 / (1 + exp(-x)), both operations rounded as torch rounds them).
DEV float torch_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// The sum of a row held strided over the warp (lane l added elements l, l + 32, ... in order,
// from 0), finished by an xor butterfly: the order of torch's warp softmax (rows up to 2048), and
// of its CUDA sum of a contiguous row shorter than 64 (torch >= 2.10, whose warp tree halves the
// offset). Every lane gets the sum.
DEV float warp_sum(float lane_sum) {
#pragma unroll
  for (int d = 16; d > 0; d /= 2) lane_sum += __shfl_xor_sync(FULL_WARP, lane_sum, d);
  return lane_sum;
}

// The warp's largest (value, id), ties to the lower id; every lane gets it.
DEV void warp_argmax(float& value, int& id) {
#pragma unroll
  for (int d = 16; d > 0; d /= 2) {
    const float other = __shfl_xor_sync(FULL_WARP, value, d);
    const int other_id = __shfl_xor_sync(FULL_WARP, id, d);
    if (other > value || (other == value && other_id < id)) {
      value = other;
      id = other_id;
    }
  }
}

// Moves (value, id), a pick, to the next one: the largest key(i), i < n, strictly below it in
// (value descending, id ascending) order. Start from (+inf, -1). Lane l evaluates i = l, l + 32...
template <typename Key>
DEV void next_pick(const Key& key, int n, float& value, int& id) {
  float best = -positive_inf();
  int best_id = n;
  for (int i = threadIdx.x % 32; i < n; i += 32) {
    const float v = key(i);
    const bool below = v < value || (v == value && i > id);
    if (below && (v > best || (v == best && i < best_id))) {
      best = v;
      best_id = i;
    }
  }
  warp_argmax(best, best_id);
  value = best;
  id = best_id;
}

// The sigmoid router's groups kept, as a mask (bit g: experts [g * size, (g + 1) * size)): the
// topk_group largest by the sum of each group's two largest keys (as torch.topk(2).sum(), ties
// counted twice), ties to the lower group. n_group <= ROUTE_MAX_GROUPS: lane g holds group g's
// score.
template <typename Key>
DEV u32 kept_groups(const Key& biased, int num_experts, int n_group, int topk_group) {
  if (n_group == 1) return 1u;
  const int lane = threadIdx.x % 32, size = num_experts / n_group;
  float score = -positive_inf();
  for (int g = 0; g < n_group; ++g) {
    float first = -positive_inf(), second = -positive_inf();
    for (int e = g * size + lane; e < (g + 1) * size; e += 32) {
      const float v = biased(e);
      if (v > first) {
        second = first;
        first = v;
      } else if (v > second) {
        second = v;
      }
    }
#pragma unroll
    for (int d = 16; d > 0; d /= 2) {
      const float other_first = __shfl_xor_sync(FULL_WARP, first, d);
      const float other_second = __shfl_xor_sync(FULL_WARP, second, d);
      second = fmaxf(fminf(first, other_first), fmaxf(second, other_second));
      first = fmaxf(first, other_first);
    }
    if (lane == g) score = first + second;
  }
  u32 kept = 0;
  float value = positive_inf();
  int id = -1;
  for (int j = 0; j < topk_group; ++j) {
    next_pick([&](int) { return score; }, n_group, value, id);  // only lane g asks for group g
    if (id < n_group) kept |= 1u << id;                         // none if scores are NaN
  }
  return kept;
}

// One token's row of logits -> its k weights and ids. Whole warp.
template <Router R, typename Logit>
DEV void route_token(const Logit* __restrict__ row, const float* __restrict__ correction_bias,
                     int num_experts, int k, int n_group, int topk_group, int renormalize,
                     float scaling_factor, float* __restrict__ weights, int* __restrict__ ids) {
  const int lane = threadIdx.x % 32;
  const auto logit = [&](int e) { return to_float(row[e]); };

  float row_max = -positive_inf(), denom = 0.0f;  // softmax over all E: torch's warp softmax
  if constexpr (R == Router::softmax) {
    for (int e = lane; e < num_experts; e += 32) row_max = fmaxf(row_max, logit(e));
#pragma unroll
    for (int d = 16; d > 0; d /= 2)
      row_max = fmaxf(row_max, __shfl_xor_sync(FULL_WARP, row_max, d));
    for (int e = lane; e < num_experts; e += 32) denom += expf(logit(e) - row_max);
    denom = warp_sum(denom);
  }

  const auto biased = [&](int e) {
    return torch_sigmoid(logit(e)) + (correction_bias ? correction_bias[e] : 0.0f);
  };
  u32 kept = 1u;
  if constexpr (R == Router::sigmoid) kept = kept_groups(biased, num_experts, n_group, topk_group);
  const int group_size = num_experts / n_group;
  const auto key = [&](int e) {
    if constexpr (R == Router::sigmoid)
      return (kept >> (e / group_size)) & 1u ? biased(e) : -positive_inf();
    else
      return logit(e);
  };

  float value = positive_inf(), first = 0.0f;
  int id = -1, tied = 0;  // tied: the picks whose key equals the last pick's
  for (int j = 0; j < k; ++j) {
    const float previous = value;
    next_pick(key, num_experts, value, id);
    tied = value == previous ? tied + 1 : 1;
    if (j == 0) first = value;
    if constexpr (R != Router::sigmoid) {
      if (lane == 0) {
        ids[j] = id;
        weights[j] = R == Router::softmax ? expf(value - row_max) / denom : value;
      }
    }
  }

  // torch.topk(sorted=False)'s order: the experts above the k-th key by ascending id, then those
  // tied with it (those of them picked: ids up to the k-th's).
  if constexpr (R == Router::sigmoid) {
    int above = 0, at = k - tied;  // the next position of each kind
    for (int e0 = 0; e0 < num_experts; e0 += 32) {
      const int e = e0 + lane;
      const float v = e < num_experts ? key(e) : -positive_inf();
      const bool is_above = e < num_experts && v > value;
      const bool is_at = e < num_experts && v == value && e <= id;
      const u32 above_mask = __ballot_sync(FULL_WARP, is_above);
      const u32 at_mask = __ballot_sync(FULL_WARP, is_at);
      const u32 lower = (1u << lane) - 1u;
      if (is_above || is_at) {
        const int p = is_above ? above + __popc(above_mask & lower) : at + __popc(at_mask & lower);
        ids[p] = e;
        weights[p] = torch_sigmoid(logit(e));
      }
      above += __popc(above_mask);
      at += __popc(at_mask);
    }
  }

  __syncwarp();  // the k weights were written by other lanes
  float lane_sum = 0.0f;
  for (int p = lane; p < k; p += 32) {
    float w = weights[p];
    if constexpr (R == Router::topk_softmax) weights[p] = w = expf(w - first);
    lane_sum += w;
  }
  // topk_softmax's weights are a softmax over the k: they are divided by their sum either way.
  const bool divide = R == Router::topk_softmax || renormalize;
  const float sum = warp_sum(lane_sum) + (R == Router::sigmoid ? 1e-20f : 0.0f);
  for (int p = lane; p < k; p += 32) {
    const float w = divide ? weights[p] / sum : weights[p];
    weights[p] = w * scaling_factor;
  }
}

template <Router R, typename Logit>
DEV void route(const Logit* __restrict__ logits, const float* __restrict__ correction_bias,
               int num_tokens, int num_experts, int k, int n_group, int topk_group, int renormalize,
               float scaling_factor, float* __restrict__ topk_weights, int* __restrict__ topk_ids) {
  const int t = blockIdx.x * ROUTE_WARPS + threadIdx.x / 32;
  if (t >= num_tokens) return;  // whole warps
  route_token<R>(logits + (i64)t * num_experts, correction_bias, num_experts, k, n_group,
                 topk_group, renormalize, scaling_factor, topk_weights + (i64)t * k,
                 topk_ids + (i64)t * k);
}

#define MOEFUSE_ROUTE_ENTRY(NAME, ROUTER, LOGIT, TAG)                                       \
  MOEFUSE_KERNEL(NAME, ROUTE_WARPS * 32, 1, "op=route method=" #ROUTER " logits=" #TAG,     \
                 (const LOGIT* logits, const float* correction_bias, int num_tokens,        \
                  int num_experts, int k, int n_group, int topk_group, int renormalize,     \
                  float scaling_factor, float* topk_weights, int* topk_ids),                \
                 {"tokens_per_block", ROUTE_WARPS}, {"max_groups", ROUTE_MAX_GROUPS}) {     \
    route<Router::ROUTER>(logits, correction_bias, num_tokens, num_experts, k, n_group,     \
                          topk_group, renormalize, scaling_factor, topk_weights, topk_ids); \
  }
#define MOEFUSE_ROUTE_ENTRIES(ROUTER)                            \
  MOEFUSE_ROUTE_ENTRY(route_##ROUTER##_f32, ROUTER, float, f32)  \
  MOEFUSE_ROUTE_ENTRY(route_##ROUTER##_bf16, ROUTER, Bf16, bf16) \
  MOEFUSE_ROUTE_ENTRY(route_##ROUTER##_f16, ROUTER, F16, f16)
MOEFUSE_ROUTE_ENTRIES(softmax)
MOEFUSE_ROUTE_ENTRIES(topk_softmax)
MOEFUSE_ROUTE_ENTRIES(sigmoid)
