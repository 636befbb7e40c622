// See cpu_gelu_op.h for why these ops exist.
#include <algorithm>

#include "var.h"
#include "ops/op_register.h"
#include "cpu_gelu_op.h"
#include "cpu_gelu_math.h"

namespace jittor {

#ifndef JIT

CpuGeluOp::CpuGeluOp(Var* x) : x(x) {
    ASSERT(x->dtype() == ns_float32) << "cpu_gelu supports float32 only, got" << x->dtype();
    y = create_output(nullptr, x->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
    x->flags.set(NodeFlags::_needed_by_backward);
}

VarPtr CpuGeluOp::grad(Var* out, Var* dout, Var* v, int v_index) {
    static auto make_backward = get_op_info("cpu_gelu_backward")
        .get_constructor<VarPtr, Var*, Var*>();
    return make_backward(x, dout);
}

void CpuGeluOp::infer_shape() { y->set_shape(x->shape); }

void CpuGeluOp::jit_prepare(JK& jk) { jk << "«T:" << x->dtype(); }

#else // JIT
#ifdef JIT_cpu

void CpuGeluOp::jit_run() {
    int64 n = x->num;
    const float* __restrict__ xp = x->ptr<float>();
    float* __restrict__ yp = y->ptr<float>();
    int64 blocks = (n + gelu_math::kBlock - 1) / gelu_math::kBlock;
    #pragma omp parallel for schedule(static)
    for (int64 b = 0; b < blocks; b++) {
        int64 end = std::min(n, (b + 1) * gelu_math::kBlock);
        #pragma omp simd
        for (int64 i = b * gelu_math::kBlock; i < end; i++) {
            float cdf, pdf;
            gelu_math::phi_and_density(xp[i], cdf, pdf);
            yp[i] = xp[i] * cdf;
        }
    }
}

#endif
#endif // JIT

} // jittor
