// Shared by the two attention ops (cpu_attention_op.h): the layout of the packed qkv, a small
// register-blocked product for one (image, head) pair's matrices, and softmax(q k^T * scale).
//
// Every product of the forward and backward pass is C = A B with B's rows contiguous, so one
// kernel serves all five: it keeps a 6 x 16 block of C in twelve 8-float registers and, per step
// along K, loads two vectors of a row of B and broadcasts six entries of A (A may be read
// transposed: it is addressed through a row stride and a column stride). Six rows, not four:
// with four the compiler folds B's loads into the FMAs and the loop is load-bound (35 vs 65
// GFLOP/s per Zen 3 core at 65 tokens). Per (image, head) the operands (N x D and N x N floats)
// stay in L1/L2, where per-call GEMM libraries spend more time setting up than multiplying
// (benchmarks/attention_tokens.py).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_exp.h"   // fast_math::exp_nonpositive

namespace jittor {
namespace attention_cpu {

// Row i of q, k or v (part 0, 1, 2) of head h of image b in a (B, N, 3 * C) tensor, C = H * D.
// bias: the projection's (3 * C) bias when it is not yet added (the ops add it as they copy q, k, v), or nullptr.
struct Packed {
    int64_t N, C, D;
    const float* base;
    const float* bias;
    const float* row(int64_t b, int64_t i, int part, int64_t h) const {
        return base + (b * N + i) * 3 * C + part * C + h * D;
    }
    const float* bias_of(int part, int64_t h) const { return bias ? bias + part * C + h * D : nullptr; }
};

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));   // the same, at any float address

// A (M x K) read as a(r, k) = p[r * rs + k * ks]: rs = lda, ks = 1 row-major; rs = 1, ks = lda transposed.
struct Lhs {
    const float* p;
    int64_t rs, ks;
    float at(int64_t r, int64_t k) const { return p[r * rs + k * ks]; }
    Lhs rows_from(int64_t r) const { return {p + r * rs, rs, ks}; }
};

// C[0:R, 0:8V] = A[0:R, :] B[:, 0:8V], K steps; B and C rows ldb / ldc floats apart.
template <int R, int V>
static inline void block(int64_t K, Lhs a, const float* __restrict__ b, int64_t ldb, float* __restrict__ c,
                         int64_t ldc) {
    v8 acc[R][V];
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 4
        for (int v = 0; v < V; v++) acc[r][v] = v8{};
    for (int64_t k = 0; k < K; k++) {
        v8 bv[V];
        #pragma GCC unroll 4
        for (int v = 0; v < V; v++) bv[v] = *(const v8u*)(b + k * ldb + 8 * v);
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const float s = a.at(r, k);
            #pragma GCC unroll 4
            for (int v = 0; v < V; v++) acc[r][v] += s * bv[v];
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 4
        for (int v = 0; v < V; v++) *(v8u*)(c + r * ldc + 8 * v) = acc[r][v];
}

template <int V>
static inline void column_panel(int64_t M, int64_t K, Lhs a, const float* b, int64_t ldb, float* c, int64_t ldc) {
    int64_t r = 0;
    for (; r + 6 <= M; r += 6) block<6, V>(K, a.rows_from(r), b, ldb, c + r * ldc, ldc);
    if (r + 4 <= M) { block<4, V>(K, a.rows_from(r), b, ldb, c + r * ldc, ldc); r += 4; }
    if (r + 2 <= M) { block<2, V>(K, a.rows_from(r), b, ldb, c + r * ldc, ldc); r += 2; }
    if (r < M) block<1, V>(K, a.rows_from(r), b, ldb, c + r * ldc, ldc);
}

// C (M x Nc) = A (M x K) B (K x Nc), C overwritten. Columns in panels of 16 and 8 (B's panel stays
// in L1 across all rows), the last Nc % 8 columns by a plain loop.
static inline void gemm(int64_t M, int64_t Nc, int64_t K, Lhs a, const float* b, int64_t ldb, float* c, int64_t ldc) {
    int64_t j = 0;
    for (; j + 16 <= Nc; j += 16) column_panel<2>(M, K, a, b + j, ldb, c + j, ldc);
    for (; j + 8 <= Nc; j += 8) column_panel<1>(M, K, a, b + j, ldb, c + j, ldc);
    for (; j < Nc; j++)
        for (int64_t r = 0; r < M; r++) {
            float s = 0.f;
            for (int64_t k = 0; k < K; k++) s += a.at(r, k) * b[k * ldb + j];
            c[r * ldc + j] = s;
        }
}

// Row stride of the per-pair N x N buffers: N rounded up to whole vectors.
static inline int64_t padded(int64_t n) { return (n + 7) / 8 * 8; }

// t (D x ldt) = m (N x D, rows contiguous) transposed; columns N..ldt-1 zero.
static inline void transpose_padded(const float* __restrict__ m, int64_t N, int64_t D, float* __restrict__ t,
                                    int64_t ldt) {
    for (int64_t d = 0; d < D; d++)
        for (int64_t j = N; j < ldt; j++) t[d * ldt + j] = 0.f;
    for (int64_t j = 0; j < N; j++)
        for (int64_t d = 0; d < D; d++) t[d * ldt + j] = m[j * D + d];
}

// Rows [0, N) of one head, `cols` floats each, `ld` floats apart, copied into contiguous rows
// (plus `add`, `cols` floats, to every row when given).
static inline void copy_rows(const float* __restrict__ src, int64_t ld, int64_t N, int64_t cols,
                             float* __restrict__ dst, const float* __restrict__ add = nullptr) {
    if (!add) {
        for (int64_t i = 0; i < N; i++) std::memcpy(dst + i * cols, src + i * ld, cols * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < N; i++) {
        #pragma omp simd
        for (int64_t c = 0; c < cols; c++) dst[i * cols + c] = src[i * ld + c] + add[c];
    }
}

// One (image, head) pair's operands and probabilities, in one thread's buffers. q, k, v are
// copied out of the packed projection first: read in place, their rows lie 3C floats apart and
// the products' inner loops wait on memory (P v 2.3x slower at 65 tokens than from a copy).
struct Pair {
    int64_t N, D, ldp;
    std::vector<float> q, k, v, kt, p;   // q, k, v: N x D; kt: D x ldp (k^T); p: N x ldp

    Pair(int64_t N, int64_t D) : N(N), D(D), ldp(padded(N)), q(N * D), k(N * D), v(N * D), kt(D * ldp),
                                 p(N * ldp) {}

    // P = softmax(q k^T * scale) of image b, head h.
    void probabilities(const Packed& x, int64_t b, int64_t h, float scale) {
        const int64_t ld = 3 * x.C;
        copy_rows(x.row(b, 0, 0, h), ld, N, D, q.data(), x.bias_of(0, h));
        copy_rows(x.row(b, 0, 1, h), ld, N, D, k.data(), x.bias_of(1, h));
        copy_rows(x.row(b, 0, 2, h), ld, N, D, v.data(), x.bias_of(2, h));
        transpose_padded(k.data(), N, D, kt.data(), ldp);
        gemm(N, ldp, D, Lhs{q.data(), D, 1}, kt.data(), ldp, p.data(), ldp);
        for (int64_t i = 0; i < N; i++) {
            float* __restrict__ pi = p.data() + i * ldp;
            float mx = -INFINITY;
            for (int64_t j = 0; j < N; j++) mx = std::max(mx, pi[j] * scale);
            float sum = 0.f;
            #pragma omp simd reduction(+:sum)
            for (int64_t j = 0; j < N; j++) {
                const float e = fast_math::exp_nonpositive(pi[j] * scale - mx);
                pi[j] = e;
                sum += e;
            }
            const float inv = 1.f / sum;
            #pragma omp simd
            for (int64_t j = 0; j < N; j++) pi[j] *= inv;
        }
    }
};

} // attention_cpu
} // jittor
