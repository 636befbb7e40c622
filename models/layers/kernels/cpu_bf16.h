// float32 -> bfloat16, round to nearest even (NaN stays NaN), threaded; shared by dnnl_bmm (which
// rounds the operands it receives as float32) and cpu_to_bf16 (which rounds an activation once so
// that a linear layer's forward and weight-gradient products can share the copy).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace jittor {
namespace bf16_math {

inline void to_bf16(const float* __restrict__ src, uint16_t* __restrict__ dst, size_t n) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        std::memcpy(&u, src + i, 4);
        uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        dst[i] = (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)((u >> 16) | 0x40u) : (uint16_t)rounded;
    }
}

} // bf16_math
} // jittor
