// See cpu_gelu_backward_op.h.
#include <algorithm>

#include "var.h"
#include "cpu_gelu_backward_op.h"
#include "cpu_gelu_math.h"

namespace jittor {

#ifndef JIT

CpuGeluBackwardOp::CpuGeluBackwardOp(Var* x, Var* dy) : x(x), dy(dy) {
    dx = create_output(nullptr, x->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
}

void CpuGeluBackwardOp::infer_shape() {
    ASSERT(x->shape == dy->shape) << "cpu_gelu_backward: shape mismatch" << x->shape << dy->shape;
    dx->set_shape(x->shape);
}

void CpuGeluBackwardOp::jit_prepare(JK& jk) { jk << "«T:" << x->dtype(); }

#else // JIT
#ifdef JIT_cpu

void CpuGeluBackwardOp::jit_run() {
    int64 n = x->num;
    const float* __restrict__ xp = x->ptr<float>();
    const float* __restrict__ gp = dy->ptr<float>();
    float* __restrict__ dp = dx->ptr<float>();
    int64 blocks = (n + gelu_math::kBlock - 1) / gelu_math::kBlock;
    #pragma omp parallel for schedule(static)
    for (int64 b = 0; b < blocks; b++) {
        int64 end = std::min(n, (b + 1) * gelu_math::kBlock);
        #pragma omp simd
        for (int64 i = b * gelu_math::kBlock; i < end; i++) {
            float cdf, pdf;
            gelu_math::phi_and_density(xp[i], cdf, pdf);
            dp[i] = gp[i] * (cdf + xp[i] * pdf);   // d/dx x Phi(x) = Phi(x) + x phi(x)
        }
    }
}

#endif
#endif // JIT

} // jittor
