// The units of the row-major kernels (grouped_gemm.cuh) and their order: output tiles (m, n) of
// the padded routing plan, each K-split `k_splits` ways.
#pragma once
#include "config.cuh"

namespace sm90 {
namespace rows {

// One unit of work: an output tile (m, n) and a slice of the K blocks.
struct Unit {
  int m, n, k_begin, k_end;
};

struct Schedule {
  int num_m, num_n, k_splits, k_blocks, k_per_split;
  DEV int count() const { return num_m * num_n * k_splits; }
  // Units sharing a K slice are walked GROUP_N n tiles at a time, n fastest inside a group, then
  // m: neighbouring CTAs share A tiles and B tiles while both are still in L2. (An expert-major
  // order measured slower on most shapes: docs/DESIGN.md D3.)
  DEV Unit unit(int u) const {
    const int split = u % k_splits;
    const int t = u / k_splits;
    const int per_group = num_m * GROUP_N;
    const int group = t / per_group, r = t % per_group;
    const int n_first = group * GROUP_N;
    const int width = min(GROUP_N, num_n - n_first);
    Unit unit;
    unit.m = r / width;
    unit.n = n_first + r % width;
    unit.k_begin = split * k_per_split;
    unit.k_end = min(k_blocks, unit.k_begin + k_per_split);
    return unit;
  }
};

}  // namespace rows
}  // namespace sm90
