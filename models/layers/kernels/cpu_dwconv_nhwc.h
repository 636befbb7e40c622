// Shared by the depthwise-conv ops (cpu_dwconv_nhwc_op.h): the tap layout and the correlation that
// both the forward and the input gradient are.
#pragma once
#include <cstdint>
#include <vector>

namespace jittor {
namespace dwconv_nhwc {

// nn.Conv2d's (C, 1, K, K) weight as (K, K, C): each tap's channel weights contiguous
static inline std::vector<float> taps_channels_last(const float* w, int64_t C, int64_t K) {
    std::vector<float> t(K * K * C);
    for (int64_t c = 0; c < C; c++)
        for (int64_t k = 0; k < K * K; k++) t[k * C + c] = w[c * K * K + k];
    return t;
}

// out[b, h, w, :] = bias + sum over the taps (i, j) of in[b, h + s (i - P), w + s (j - P), :] * tap[i, j, :],
// s = 1 (the forward) or -1 (flip: the input gradient, in = dy, no bias); P = K / 2, out of range is 0.
static inline void correlate(const float* __restrict__ in, const float* __restrict__ taps,
                             const float* __restrict__ bias, float* __restrict__ out,
                             int64_t B, int64_t H, int64_t W, int64_t C, int64_t K, bool flip) {
    const int64_t P = K / 2, s = flip ? -1 : 1;
    #pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        for (int64_t w = 0; w < W; w++) {
            float* __restrict__ o = out + ((b * H + h) * W + w) * C;
            #pragma omp simd
            for (int64_t c = 0; c < C; c++) o[c] = bias ? bias[c] : 0.f;
            for (int64_t i = 0; i < K; i++) {
                int64_t ih = h + s * (i - P);
                if (ih < 0 || ih >= H) continue;
                for (int64_t j = 0; j < K; j++) {
                    int64_t iw = w + s * (j - P);
                    if (iw < 0 || iw >= W) continue;
                    const float* __restrict__ x = in + ((b * H + ih) * W + iw) * C;
                    const float* __restrict__ t = taps + (i * K + j) * C;
                    #pragma omp simd
                    for (int64_t c = 0; c < C; c++) o[c] += x[c] * t[c];
                }
            }
        }
    }
}

} // dwconv_nhwc
} // jittor
