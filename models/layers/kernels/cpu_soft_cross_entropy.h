// Row statistics shared by the soft-target cross-entropy ops (not an op itself).
#pragma once
#include <cmath>
#include "cpu_exp.h"

namespace jittor {
namespace soft_ce {

// One row of K logits s and target weights p: the max of s, log sum exp(s), sum p and sum p*s.
struct RowStats { float mx, lse, psum, pdot; };

static inline RowStats row_stats(const float* __restrict__ s, const float* __restrict__ p, long long k) {
    float mx = -INFINITY, psum = 0.f, pdot = 0.f;
    #pragma omp simd reduction(max:mx)
    for (long long i = 0; i < k; i++) mx = s[i] > mx ? s[i] : mx;
    #pragma omp simd reduction(+:psum, pdot)
    for (long long i = 0; i < k; i++) {
        psum += p[i];
        pdot += p[i] * s[i];
    }
    float se = 0.f;
    #pragma omp simd reduction(+:se)
    for (long long i = 0; i < k; i++) se += fast_math::exp_nonpositive(s[i] - mx);
    return {mx, mx + std::log(se), psum, pdot};
}

} // soft_ce
} // jittor
