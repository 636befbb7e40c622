// See cpu_layer_norm_grad_wb_op.h.
#include <cmath>
#include <vector>
#include <omp.h>

#include "var.h"
#include "cpu_layer_norm_grad_wb_op.h"
#include "cpu_row_stats.h"

using namespace std;

namespace jittor {

#ifndef JIT

CpuLayerNormGradWbOp::CpuLayerNormGradWbOp(Var* x, Var* dy, float64 eps, bool bias)
    : x(x), dy(dy), eps(eps), bias(bias) {
    out = create_output(nullptr, x->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
}

void CpuLayerNormGradWbOp::infer_shape() {
    ASSERT(x->shape == dy->shape) << "cpu_layer_norm_grad_wb: shape mismatch" << x->shape << dy->shape;
    out->set_shape({x->shape[x->shape.size()-1]});
}

void CpuLayerNormGradWbOp::jit_prepare(JK& jk) {
    jk << "«T:" << x->dtype();
    jk << "«BIAS:" << (bias ? '1' : '0');
}

#else // JIT
#ifdef JIT_cpu
void CpuLayerNormGradWbOp::jit_run() {
    int64 cols = x->shape[x->shape.size()-1];
    int64 rows = cols ? x->num / cols : 0;
    const T* __restrict__ xp = x->ptr<T>();
    const T* __restrict__ gp = dy->ptr<T>();
    T* __restrict__ op = out->ptr<T>();
    const T e = (T)eps;
    int nt = omp_get_max_threads();
    vector<T> partial((size_t)nt * cols, T(0));
    #pragma omp parallel
    {
        T* acc = partial.data() + (size_t)omp_get_thread_num() * cols;
        #pragma omp for schedule(static)
        for (int64 r = 0; r < rows; r++) {
            const T* xr = xp + r * cols;
            const T* gr = gp + r * cols;
            if (@BIAS) {
                for (int64 i = 0; i < cols; i++) acc[i] += gr[i];
            } else {
                T mean, rstd;
                layer_norm_row_stats(xr, cols, e, mean, rstd);
                for (int64 i = 0; i < cols; i++) acc[i] += gr[i] * (xr[i] - mean) * rstd;
            }
        }
    }
    for (int64 i = 0; i < cols; i++) {
        T s = 0;
        for (int t = 0; t < nt; t++) s += partial[(size_t)t * cols + i];
        op[i] = s;
    }
}
#endif
#endif // JIT

} // jittor
