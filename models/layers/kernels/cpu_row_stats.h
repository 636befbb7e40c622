// Row statistics shared by the fused LayerNorm kernels (forward and both gradients): each
// recomputes them from x rather than storing them, so all three must compute them identically.
#pragma once
#include <cmath>

#include "common.h"

namespace jittor {

// Mean and 1 / sqrt(biased variance + eps) of one row of `cols` values.
template <class T>
inline void layer_norm_row_stats(const T* xr, int64 cols, T eps, T& mean, T& rstd) {
    T s = 0;
    for (int64 i = 0; i < cols; i++) s += xr[i];
    mean = s / cols;
    T v = 0;
    for (int64 i = 0; i < cols; i++) { T d = xr[i] - mean; v += d * d; }
    rstd = T(1) / std::sqrt(v / cols + eps);
}

} // jittor
