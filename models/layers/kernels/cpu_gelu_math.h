// Phi(x) and x * phi(x) for GELU, vectorisable (no libm calls); see cpu_gelu_op.h.
#pragma once
#include <cstdint>
#include <cstring>

namespace jittor {
namespace gelu_math {

// Blocks of elements per OpenMP task: enough work per thread; the inner loop vectorises.
static constexpr int64_t kBlock = 4096;

// e^z for z <= 0 (z is clamped to -87, where e^z is below float's normal range anyway):
// z = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor series to r^6 (relative error < 2e-7),
// 2^n put into the exponent bits.
static inline float exp_nonpositive(float z) {
    z = z < -87.f ? -87.f : z;
    float n = __builtin_floorf(z * 1.44269504f + 0.5f);
    float r = z - n * 0.693359375f;          // ln2 split in two: the high part is exact in float
    r = r + n * 2.12194440e-4f;
    float p = 1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 + r * (1.f / 720))))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

// Phi(x) (the standard normal CDF) and the density phi(x), from one exp.
static inline void phi_and_density(float x, float& cdf, float& pdf) {
    float e = exp_nonpositive(-0.5f * x * x);
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
