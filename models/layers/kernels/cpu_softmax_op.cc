// See cpu_softmax_op.h for why these ops exist.
#include <cmath>
#include <algorithm>

#include "var.h"
#include "ops/op_register.h"
#include "cpu_softmax_op.h"
#include "cpu_exp.h"

using namespace std;

namespace jittor {

#ifndef JIT

CpuSoftmaxOp::CpuSoftmaxOp(Var* x) : x(x) {
    ASSERT(x->dtype() == ns_float32) << "cpu_softmax supports float32 only, got" << x->dtype();
    y = create_output(nullptr, x->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
    // the gradient needs only the output, not the input
    y->flags.set(NodeFlags::_needed_by_backward);
}

VarPtr CpuSoftmaxOp::grad(Var* out, Var* dout, Var* v, int v_index) {
    static auto make_backward = get_op_info("cpu_softmax_backward")
        .get_constructor<VarPtr, Var*, Var*>();
    return make_backward(y, dout);
}

void CpuSoftmaxOp::infer_shape() {
    ASSERTop(x->shape.size(),>=,1);
    y->set_shape(x->shape);
}

void CpuSoftmaxOp::jit_prepare(JK& jk) {
    jk << "«T:" << x->dtype();
}

#else // JIT
#ifdef JIT_cpu
void CpuSoftmaxOp::jit_run() {
    const auto& s = x->shape;
    int64 cols = s[s.size()-1];
    int64 rows = cols ? x->num / cols : 0;
    const T* __restrict__ xp = x->ptr<T>();
    T* __restrict__ yp = y->ptr<T>();
    #pragma omp parallel for schedule(static)
    for (int64 r = 0; r < rows; r++) {
        const T* xr = xp + r * cols;
        T* yr = yp + r * cols;
        T mx = -INFINITY;
        for (int64 i = 0; i < cols; i++) mx = std::max(mx, xr[i]);
        if (!(mx > -INFINITY)) {  // a row of -inf (fully masked) gives NaN, as the reference does
            for (int64 i = 0; i < cols; i++) yr[i] = NAN;
            continue;
        }
        T sum = 0;
        // e^(x - max) <= 1: the vectorisable exp (cpu_exp.h; libm's exp was most of this op's time
        // on the 8192-wide prototype rows of the DINO / iBOT loss)
        #pragma omp simd reduction(+:sum)
        for (int64 i = 0; i < cols; i++) {
            T e = fast_math::exp_nonpositive(xr[i] - mx);
            yr[i] = e;
            sum += e;
        }
        T inv = T(1) / sum;
        #pragma omp simd
        for (int64 i = 0; i < cols; i++) yr[i] *= inv;
    }
}

#endif
#endif // JIT

} // jittor
