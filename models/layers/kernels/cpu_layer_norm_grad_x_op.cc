// See cpu_layer_norm_grad_x_op.h.
#include <cmath>

#include "var.h"
#include "cpu_layer_norm_grad_x_op.h"
#include "cpu_row_stats.h"

using namespace std;

namespace jittor {

#ifndef JIT

CpuLayerNormGradXOp::CpuLayerNormGradXOp(Var* x, Var* w, Var* dy, float64 eps)
    : x(x), w(w), dy(dy), eps(eps) {
    dx = create_output(nullptr, x->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
}

void CpuLayerNormGradXOp::infer_shape() {
    ASSERT(x->shape == dy->shape) << "cpu_layer_norm_grad_x: shape mismatch" << x->shape << dy->shape;
    dx->set_shape(x->shape);
}

void CpuLayerNormGradXOp::jit_prepare(JK& jk) {
    jk << "«T:" << x->dtype();
}

#else // JIT
#ifdef JIT_cpu
void CpuLayerNormGradXOp::jit_run() {
    int64 cols = x->shape[x->shape.size()-1];
    int64 rows = cols ? x->num / cols : 0;
    const T* __restrict__ xp = x->ptr<T>();
    const T* __restrict__ wp = w->ptr<T>();
    const T* __restrict__ gp = dy->ptr<T>();
    T* __restrict__ dp = dx->ptr<T>();
    const T e = (T)eps;
    #pragma omp parallel for schedule(static)
    for (int64 r = 0; r < rows; r++) {
        const T* xr = xp + r * cols;
        const T* gr = gp + r * cols;
        T* dr = dp + r * cols;
        T mean, rstd;
        layer_norm_row_stats(xr, cols, e, mean, rstd);
        T sg = 0, sgx = 0;
        for (int64 i = 0; i < cols; i++) {
            T g = gr[i] * wp[i];
            sg += g;
            sgx += g * (xr[i] - mean) * rstd;
        }
        sg /= cols;
        sgx /= cols;
        for (int64 i = 0; i < cols; i++)
            dr[i] = rstd * (gr[i] * wp[i] - sg - (xr[i] - mean) * rstd * sgx);
    }
}
#endif
#endif // JIT

} // jittor
