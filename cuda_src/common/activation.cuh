// The activations GEMM1's epilogue applies, on f32 values with the biases already added.
//
// Every gated form transformers' MoE families use is one formula with four runtime parameters,
// so a new gated activation costs no kernel instantiation (a kernel parameter, not a template):
//   g = min(gate, limit), u = clamp(up, -limit, limit),
//   out = g * sigmoid(alpha * g * (1 + cubic * g^2)) * (u + beta)
//   SwiGLU           alpha 1,             cubic 0,        beta 0, limit +inf (or L: clamped)
//   gpt-oss          alpha 1.702,         cubic 0,        beta 1, limit 7
//   GELU-tanh gated  alpha 2 sqrt(2/pi),  cubic 0.044715, beta 0, limit +inf
// (gelu_tanh(g) = g (1 + tanh(z)) / 2 = g sigmoid(2 z), z = sqrt(2/pi) (g + 0.044715 g^3)).
// The non-gated form (Nemotron-H) is relu(u)^2.
#pragma once

struct GatedActivation {
  float alpha, cubic, beta, limit;
};

__device__ __forceinline__ float gated_activation(const GatedActivation& act, float gate,
                                                  float up) {
  const float g = fminf(gate, act.limit);
  const float u = fminf(fmaxf(up, -act.limit), act.limit);
  const float z = act.alpha * g * fmaf(act.cubic * g, g, 1.0f);
  // The fast divide (2 ulp; the result is rounded to 16 bits anyway): for z -> -inf, __expf(-z)
  // overflows to inf and __fdividef returns 0, the right limit.
  return __fdividef(g, 1.0f + __expf(-z)) * (u + act.beta);
}

__device__ __forceinline__ float relu2(float x) {
  const float r = fmaxf(x, 0.0f);
  return r * r;
}

// A gated GEMM1's activation and where gate j's and up j's rows sit among an expert's 2I rows of
// w1 and b1: j * gate_up_step and that + up_offset (concatenated: 1, I; interleaved, as gpt-oss
// stores them: 2, 1). Run-time values: either order, one kernel.
struct GateArgs {
  GatedActivation act;
  int gate_up_step, up_offset;
};

// An entry point's further parameters after the others, MOEFUSE_GATE_PARAMS_##GATE, and the
// GateArgs built from them, MOEFUSE_GATE_ARGS_##GATE: GATE is gated (a gated GEMM1) or plain.
// clang-format off
#define MOEFUSE_GATE_PARAMS_gated                                                          \
  , float act_alpha, float act_cubic, float act_beta, float act_limit, int gate_up_step, \
  int up_offset
#define MOEFUSE_GATE_ARGS_gated \
  GateArgs{{act_alpha, act_cubic, act_beta, act_limit}, gate_up_step, up_offset}
#define MOEFUSE_GATE_PARAMS_plain
#define MOEFUSE_GATE_ARGS_plain GateArgs{}
// clang-format on
