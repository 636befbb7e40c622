// Shared by the two attention ops (cpu_attention_op.h): the layout of the packed qkv and the
// softmax(q k^T * scale) rows of one (image, head) pair.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu_exp.h"   // fast_math::exp_nonpositive

namespace jittor {
namespace attention_cpu {

// Row i of q, k or v (part 0, 1, 2) of head h of image b in a (B, N, 3 * C) tensor, C = H * D.
struct Packed {
    int64_t N, C, D;
    const float* base;
    const float* row(int64_t b, int64_t i, int part, int64_t h) const {
        return base + (b * N + i) * 3 * C + part * C + h * D;
    }
};

// out[j] = scale * (a . x_j) for the N rows x_j of one (image, head) part
static inline void dots(const float* __restrict__ a, const Packed& x, int64_t b, int64_t h, int part,
                        float scale, float* __restrict__ out) {
    const int64_t N = x.N, D = x.D;
    for (int64_t j = 0; j < N; j++) {
        const float* __restrict__ r = x.row(b, j, part, h);
        float s = 0.f;
        #pragma omp simd reduction(+:s)
        for (int64_t d = 0; d < D; d++) s += a[d] * r[d];
        out[j] = s * scale;
    }
}

// P = softmax(q k^T * scale) of image b, head h, row-major N x N into p.
static inline void probabilities(const Packed& x, int64_t b, int64_t h, float scale, float* __restrict__ p) {
    const int64_t N = x.N;
    for (int64_t i = 0; i < N; i++) {
        float* __restrict__ pi = p + i * N;
        dots(x.row(b, i, 0, h), x, b, h, 1, scale, pi);
        float mx = -INFINITY;
        for (int64_t j = 0; j < N; j++) mx = std::max(mx, pi[j]);
        float sum = 0.f;
        #pragma omp simd reduction(+:sum)
        for (int64_t j = 0; j < N; j++) {
            const float e = fast_math::exp_nonpositive(pi[j] - mx);
            pi[j] = e;
            sum += e;
        }
        const float inv = 1.f / sum;
        #pragma omp simd
        for (int64_t j = 0; j < N; j++) pi[j] *= inv;
    }
}

} // attention_cpu
} // jittor
