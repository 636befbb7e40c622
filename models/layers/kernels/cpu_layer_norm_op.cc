// See cpu_layer_norm_op.h.
#include <cmath>

#include "var.h"
#include "ops/op_register.h"
#include "cpu_layer_norm_op.h"
#include "cpu_row_stats.h"

using namespace std;

namespace jittor {

#ifndef JIT

CpuLayerNormOp::CpuLayerNormOp(Var* x, Var* w, Var* b, float64 eps) : x(x), w(w), b(b), eps(eps) {
    ASSERT(x->dtype() == ns_float32 && w->dtype() == ns_float32 && b->dtype() == ns_float32)
        << "cpu_layer_norm supports float32 only";
    y = create_output(nullptr, x->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
    // the gradients recompute the row statistics from x (cheaper than storing them)
    x->flags.set(NodeFlags::_needed_by_backward);
    w->flags.set(NodeFlags::_needed_by_backward);
}

VarPtr CpuLayerNormOp::grad(Var* out, Var* dout, Var* v, int v_index) {
    static auto make_grad_x = get_op_info("cpu_layer_norm_grad_x")
        .get_constructor<VarPtr, Var*, Var*, Var*, float64>();
    static auto make_grad_wb = get_op_info("cpu_layer_norm_grad_wb")
        .get_constructor<VarPtr, Var*, Var*, float64, bool>();
    if (v_index == 0) return make_grad_x(x, w, dout, eps);
    return make_grad_wb(x, dout, eps, v_index == 2);
}

void CpuLayerNormOp::infer_shape() {
    ASSERTop(x->shape.size(),>=,1);
    auto c = x->shape[x->shape.size()-1];
    ASSERT(w->shape.size() == 1 && w->shape[0] == c && b->shape.size() == 1 && b->shape[0] == c)
        << "cpu_layer_norm: weight/bias must be (C,) with C =" << c << "got" << w->shape << b->shape;
    y->set_shape(x->shape);
}

void CpuLayerNormOp::jit_prepare(JK& jk) {
    jk << "«T:" << x->dtype();
}

#else // JIT
#ifdef JIT_cpu
void CpuLayerNormOp::jit_run() {
    int64 cols = x->shape[x->shape.size()-1];
    int64 rows = cols ? x->num / cols : 0;
    const T* __restrict__ xp = x->ptr<T>();
    const T* __restrict__ wp = w->ptr<T>();
    const T* __restrict__ bp = b->ptr<T>();
    T* __restrict__ yp = y->ptr<T>();
    const T e = (T)eps;
    #pragma omp parallel for schedule(static)
    for (int64 r = 0; r < rows; r++) {
        const T* xr = xp + r * cols;
        T* yr = yp + r * cols;
        T mean, rstd;
        layer_norm_row_stats(xr, cols, e, mean, rstd);
        for (int64 i = 0; i < cols; i++) yr[i] = (xr[i] - mean) * rstd * wp[i] + bp[i];
    }
}
#endif
#endif // JIT

} // jittor
