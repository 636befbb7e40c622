// See cpu_gelu_op.h for why these ops exist.
#include <algorithm>
#include <vector>

#include "var.h"
#include "ops/op_register.h"
#include "cpu_gelu_op.h"
#include "cpu_gelu_math.h"

namespace jittor {

#ifndef JIT

CpuGeluOp::CpuGeluOp(Var* x) : x(x), bias(nullptr) {
    ASSERT(x->dtype() == ns_float32) << "cpu_gelu supports float32 only, got" << x->dtype();
    y = create_output(nullptr, x->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
    x->flags.set(NodeFlags::_needed_by_backward);
}

CpuGeluOp::CpuGeluOp(Var* x, Var* bias) : CpuGeluOp(x) {
    ASSERT(bias->dtype() == ns_float32) << "cpu_gelu bias must be float32, got" << bias->dtype();
    this->bias = bias;
    bias->flags.set(NodeFlags::_needed_by_backward);
    flags.set(NodeFlags::_grads);
}

VarPtr CpuGeluOp::grad(Var* out, Var* dout, Var* v, int v_index) {
    static auto make_backward = get_op_info("cpu_gelu_backward")
        .get_constructor<VarPtr, Var*, Var*>();
    return make_backward(x, dout);
}

void CpuGeluOp::grads(Var** douts, VarPtr* dins) {
    static auto make_backward = get_op_info("cpu_gelu_backward")
        .get_constructor<std::vector<VarPtr>, Var*, Var*, Var*>();
    if (!douts[0]) return;   // y does not reach the loss: no gradients
    auto d = make_backward(x, bias, douts[0]);
    dins[0] = move(d[0]);
    dins[1] = move(d[1]);
}

void CpuGeluOp::infer_shape() {
    if (bias)
        ASSERT(bias->shape.size() == 1 && x->shape.size() >= 1
               && x->shape[x->shape.size() - 1] == bias->shape[0])
            << "cpu_gelu: bias" << bias->shape << "does not match the last axis of" << x->shape;
    y->set_shape(x->shape);
}

void CpuGeluOp::jit_prepare(JK& jk) {
    jk << "«T:" << x->dtype();
    jk << "«Bias:" << (bias ? '1' : '0');
}

#else // JIT
#ifdef JIT_cpu

void CpuGeluOp::jit_run() {
    const float* __restrict__ xp = x->ptr<float>();
    float* __restrict__ yp = y->ptr<float>();
    const float* __restrict__ bp = @Bias ? bias->ptr<float>() : nullptr;
    const gelu_math::Tasks tasks(x->num, @Bias ? bias->num : 0);
    #pragma omp parallel for schedule(static)
    for (int64 t = 0; t < tasks.count; t++)
        gelu_math::for_each_element<bool(@Bias)>(tasks, t, xp, bp, [=](int64 i, int64, float h, float cdf, float) {
            yp[i] = h * cdf;
        });
}

#endif
#endif // JIT

} // jittor
