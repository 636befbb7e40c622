// Phi(x) and x * phi(x) for GELU, vectorisable (no libm calls); see cpu_gelu_op.h.
#pragma once
#include <cstdint>

#include "cpu_exp.h"

namespace jittor {
namespace gelu_math {

// Blocks of elements per OpenMP task: enough work per thread; the inner loop vectorises.
static constexpr int64_t kBlock = 4096;

// Phi(x) (the standard normal CDF) and the density phi(x), from one exp.
static inline void phi_and_density(float x, float& cdf, float& pdf) {
    float e = fast_math::exp_nonpositive(-0.5f * x * x);
    float a = (x < 0.f ? -x : x) * 0.70710678f;   // |x| / sqrt 2
    float t = 1.f / (1.f + 0.3275911f * a);
    float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f
               + t * (-1.453152027f + t * 1.061405429f))));
    float tail = 0.5f * poly * e;                 // 0.5 erfc(|x| / sqrt 2) = Phi(-|x|)
    cdf = x < 0.f ? tail : 1.f - tail;
    pdf = 0.39894228f * e;                        // e^(-x^2/2) / sqrt(2 pi)
}

} // gelu_math
} // jittor
