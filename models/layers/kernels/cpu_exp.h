// e^z for z <= 0 without libm (vectorisable inside `omp simd` loops); shared by GELU
// (cpu_gelu_math.h) and the attention softmax (cpu_attention.h).
#pragma once
#include <cstdint>
#include <cstring>

namespace jittor {
namespace fast_math {

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

} // fast_math
} // jittor
