// Phi(x) and x * phi(x) for GELU, vectorisable (no libm calls), and the element loop of both GELU
// ops; see cpu_gelu_op.h.
#pragma once
#include <algorithm>
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

// How both ops split n elements into tasks of `cols`: the rows (the bias's length) with a bias, so
// that element i of a task adds bias[i - begin], else blocks of kBlock.
struct Tasks {
    int64_t n, cols, count;
    Tasks(int64_t n, int64_t bias_len) : n(n), cols(bias_len ? bias_len : kBlock), count((n + cols - 1) / cols) {}
    int64_t begin(int64_t t) const { return t * cols; }
    int64_t end(int64_t t) const { return std::min(n, (t + 1) * cols); }
};

// f(i, c, h, cdf, pdf) for each element i of task t: h = x[i] (+ bias[c] when kBias), c = i - begin,
// cdf = Phi(h), pdf = phi(h). Inlined into the caller's loop, which vectorises.
template <bool kBias, class F>
static inline void for_each_element(const Tasks& tasks, int64_t t, const float* __restrict__ xp,
                                    const float* __restrict__ bp, F f) {
    const int64_t begin = tasks.begin(t), end = tasks.end(t);
    #pragma omp simd
    for (int64_t i = begin; i < end; i++) {
        const float h = kBias ? xp[i] + bp[i - begin] : xp[i];
        float cdf, pdf;
        phi_and_density(h, cdf, pdf);
        f(i, i - begin, h, cdf, pdf);
    }
}

} // gelu_math
} // jittor
