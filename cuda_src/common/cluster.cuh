// Thread-block clusters (sm_90+): rank, cluster-wide barrier, TMA multicast into every CTA of a
// mask, and an mbarrier arrival on a partner CTA's twin barrier. Each wrapper is one PTX
// instruction (PTX_CRIB section 6; checked on a GPU by probes/cluster_probe.py).
#pragma once
#include "async.cuh"

// This CTA's rank in its cluster.
DEV u32 cluster_ctarank() {
  u32 rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return rank;
}
// Every thread of every CTA of the cluster (a whole warp at a time: .aligned) arrives and waits;
// earlier writes and barrier inits become visible cluster-wide.
DEV void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::
                   : "memory");
}
// tma_load_2d's box into the same shared-memory offset of every CTA whose rank bit is set in
// `cta_mask`; each receiving CTA's `bar` (same offset) gets the box's bytes as complete_tx.
DEV void tma_load_2d_multicast(void* smem_dst, const TmaDesc* desc, u64* bar, int c0, int c1,
                               u16 cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::"
      "cluster [%0], [%1, {%3, %4}], [%2], %5;" ::"r"(smem_u32(smem_dst)),
      "l"(desc), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "h"(cta_mask)
      : "memory");
}
// One arrival on the twin of this CTA's `bar` in the cluster's CTA `rank`.
DEV void mbar_arrive_cluster(u64* bar, u32 rank) {
  asm volatile(
      "{\n\t.reg .b32 remote;\n\tmapa.shared::cluster.u32 remote, %0, %1;\n\t"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n\t}" ::"r"(smem_u32(bar)),
      "r"(rank)
      : "memory");
}
