// A kernel's launch contract, published from the CUDA side: beside each entry point, the numbers
// its launch needs (threads, dynamic shared memory, tile sizes, TMA boxes, ...), tags that say what
// it computes (op, element types, family) and its parameter list as written. The host reads all
// three from the cubin itself (moefuse/_spec.py), before any launch and without a GPU, so no number
// CUDA defines is typed again in Python, and arguments are passed by name in the order declared.
#pragma once

// One published number. `key` names it for the host; the value is any constant expression.
struct SpecInt {
  char key[24];
  long long value;
};

// Declares entry point NAME with __launch_bounds__(THREADS, MIN_BLOCKS), parameter list PARAMS (a
// parenthesised list) and the published contract; the kernel body follows the macro. TAGS is a
// string of space-separated key=value words; the variadic arguments are further SpecInt entries,
// e.g. {"smem_bytes", Config::SMEM_BYTES}. "threads" is published from THREADS.
#define MOEFUSE_KERNEL(NAME, THREADS, MIN_BLOCKS, TAGS, PARAMS, ...)                  \
  extern "C" __device__ const char NAME##__moefuse_tags[] = TAGS;                     \
  extern "C" __device__ const char NAME##__moefuse_params[] = #PARAMS;                \
  extern "C" __device__ const SpecInt NAME##__moefuse_ints[] = {{"threads", THREADS}, \
                                                                __VA_ARGS__};         \
  extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) NAME PARAMS
