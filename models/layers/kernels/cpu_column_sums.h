// Column sums of rows that several OpenMP threads produce: the bias gradient of a linear layer
// summed inside the backward op that writes the layer's output gradient (GELU, attention), while
// those rows are still in cache, instead of in a separate reduction over (rows, out) floats.
// Each thread adds into its own slice; the slices are summed in thread order afterwards, so the
// result does not depend on timing (the same thread count gives the same bits).
#pragma once
#include <omp.h>
#include <cstdint>
#include <vector>

namespace jittor {
namespace column_sums {

struct PerThread {
    int64_t cols;
    std::vector<float> parts;   // omp_get_max_threads() slices of `cols` floats
    // Made outside the parallel region that fills it (that region's team has at most this many threads).
    explicit PerThread(int64_t cols) : cols(cols), parts(int64_t(omp_get_max_threads()) * cols, 0.f) {}
    // This thread's slice (call inside the parallel region).
    float* mine() { return parts.data() + int64_t(omp_get_thread_num()) * cols; }
    // out[c] = the sum over the slices of column c.
    void sum_into(float* __restrict__ out) const {
        for (int64_t c = 0; c < cols; c++) out[c] = 0.f;
        for (size_t s = 0; s < parts.size(); s += cols) {
            const float* __restrict__ part = parts.data() + s;
            #pragma omp simd
            for (int64_t c = 0; c < cols; c++) out[c] += part[c];
        }
    }
};

// acc[c] += sum over i < n of rows[i * ld + c], c < cols.
static inline void add_rows(const float* __restrict__ rows, int64_t ld, int64_t n, int64_t cols,
                            float* __restrict__ acc) {
    for (int64_t i = 0; i < n; i++) {
        const float* __restrict__ r = rows + i * ld;
        #pragma omp simd
        for (int64_t c = 0; c < cols; c++) acc[c] += r[c];
    }
}

} // column_sums
} // jittor
