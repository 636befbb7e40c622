// See cpu_gelu_backward_op.h.
#include <algorithm>

#include "var.h"
#include "cpu_gelu_backward_op.h"
#include "cpu_gelu_math.h"
#include "cpu_column_sums.h"

namespace jittor {

#ifndef JIT

CpuGeluBackwardOp::CpuGeluBackwardOp(Var* x, Var* dy) : x(x), bias(nullptr), dy(dy), dbias(nullptr) {
    dx = create_output(nullptr, x->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
}

CpuGeluBackwardOp::CpuGeluBackwardOp(Var* x, Var* bias, Var* dy) : CpuGeluBackwardOp(x, dy) {
    this->bias = bias;
    dbias = create_output(nullptr, bias->dtype());
}

void CpuGeluBackwardOp::infer_shape() {
    ASSERT(x->shape == dy->shape) << "cpu_gelu_backward: shape mismatch" << x->shape << dy->shape;
    dx->set_shape(x->shape);
    if (bias) dbias->set_shape(bias->shape);
}

void CpuGeluBackwardOp::jit_prepare(JK& jk) {
    jk << "«T:" << x->dtype();
    jk << "«Bias:" << (bias ? '1' : '0');
}

#else // JIT
#ifdef JIT_cpu

void CpuGeluBackwardOp::jit_run() {
    const float* __restrict__ xp = x->ptr<float>();
    const float* __restrict__ gp = dy->ptr<float>();
    float* __restrict__ dp = dx->ptr<float>();
    // tasks of `cols` elements: the rows (the bias's length) with a bias, else blocks of kBlock
    const int64 n = x->num, cols = @Bias ? bias->num : gelu_math::kBlock;
    const float* __restrict__ bp = @Bias ? bias->ptr<float>() : nullptr;
    const int64 tasks = (n + cols - 1) / cols;
    column_sums::PerThread sums(@Bias ? cols : 0);   // dbias: the column sums of dx
    #pragma omp parallel
    {
        float* __restrict__ acc = sums.mine();
        #pragma omp for schedule(static)
        for (int64 t = 0; t < tasks; t++) {
            const int64 begin = t * cols, end = std::min(n, begin + cols);
            #pragma omp simd
            for (int64 i = begin; i < end; i++) {
                const float h = @Bias ? xp[i] + bp[i - begin] : xp[i];
                float cdf, pdf;
                gelu_math::phi_and_density(h, cdf, pdf);
                const float d = gp[i] * (cdf + h * pdf);   // d/dh h Phi(h) = Phi(h) + h phi(h)
                dp[i] = d;
                if (@Bias) acc[i - begin] += d;
            }
        }
    }
    if (@Bias) sums.sum_into(dbias->ptr<float>());
}

#endif
#endif // JIT

} // jittor
