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
    const float* __restrict__ bp = @Bias ? bias->ptr<float>() : nullptr;
    const gelu_math::Tasks tasks(x->num, @Bias ? bias->num : 0);
    column_sums::PerThread sums(@Bias ? tasks.cols : 0);   // dbias: the column sums of dx
    #pragma omp parallel
    {
        float* __restrict__ acc = sums.mine();
        #pragma omp for schedule(static)
        for (int64 t = 0; t < tasks.count; t++)
            gelu_math::for_each_element<bool(@Bias)>(tasks, t, xp, bp, [=](int64 i, int64 c, float h, float cdf, float pdf) {
                const float d = gp[i] * (cdf + h * pdf);   // d/dh h Phi(h) = Phi(h) + h phi(h)
                dp[i] = d;
                if (@Bias) acc[c] += d;
            });
    }
    if (@Bias) sums.sum_into(dbias->ptr<float>());
}

#endif
#endif // JIT

} // jittor
