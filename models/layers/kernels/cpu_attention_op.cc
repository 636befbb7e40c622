// See cpu_attention_op.h for why this op exists.
#include <vector>

#include "var.h"
#include "ops/op_register.h"
#include "cpu_attention_op.h"
#include "cpu_attention.h"

namespace jittor {

#ifndef JIT

CpuAttentionOp::CpuAttentionOp(Var* qkv, int heads, float64 scale)
    : qkv(qkv), bias(nullptr), heads(heads), scale(scale) {
    ASSERT(qkv->dtype() == ns_float32) << "cpu_attention supports float32 only, got" << qkv->dtype();
    y = create_output(nullptr, qkv->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
    qkv->flags.set(NodeFlags::_needed_by_backward);   // the backward recomputes the probabilities
}

CpuAttentionOp::CpuAttentionOp(Var* qkv, Var* bias, int heads, float64 scale) : CpuAttentionOp(qkv, heads, scale) {
    ASSERT(bias->dtype() == ns_float32) << "cpu_attention bias must be float32, got" << bias->dtype();
    this->bias = bias;
    bias->flags.set(NodeFlags::_needed_by_backward);
    flags.set(NodeFlags::_grads);
}

VarPtr CpuAttentionOp::grad(Var* out, Var* dout, Var* v, int v_index) {
    static auto make_backward = get_op_info("cpu_attention_backward")
        .get_constructor<VarPtr, Var*, Var*, int, float64>();
    return make_backward(qkv, dout, heads, scale);
}

void CpuAttentionOp::grads(Var** douts, VarPtr* dins) {
    static auto make_backward = get_op_info("cpu_attention_backward")
        .get_constructor<std::vector<VarPtr>, Var*, Var*, Var*, int, float64>();
    if (!douts[0]) return;   // y does not reach the loss: no gradients
    auto d = make_backward(qkv, bias, douts[0], heads, scale);
    dins[0] = move(d[0]);
    dins[1] = move(d[1]);
}

void CpuAttentionOp::infer_shape() {
    ASSERTop(qkv->shape.size(),==,3);
    ASSERT(heads > 0 && qkv->shape[2] % (3 * heads) == 0)
        << "cpu_attention: last dim" << qkv->shape[2] << "is not 3 x heads x D, heads =" << heads;
    if (bias)
        ASSERT(bias->shape.size() == 1 && bias->shape[0] == qkv->shape[2])
            << "cpu_attention: bias" << bias->shape << "does not match qkv" << qkv->shape;
    y->set_shape({qkv->shape[0], qkv->shape[1], qkv->shape[2] / 3});
}

void CpuAttentionOp::jit_prepare(JK& jk) {
    jk << "«T:" << qkv->dtype();
    jk << "«Bias:" << (bias ? '1' : '0');
}

#else // JIT
#ifdef JIT_cpu

void CpuAttentionOp::jit_run() {
    const int64 B = qkv->shape[0], N = qkv->shape[1], C = qkv->shape[2] / 3, H = heads, D = C / H;
    const int64 ldp = attention_cpu::padded(N);
    const attention_cpu::Packed x{N, C, D, qkv->ptr<float>(), @Bias ? bias->ptr<float>() : nullptr};
    float* __restrict__ yp = y->ptr<float>();
    const float sc = (float)scale;
    #pragma omp parallel
    {
        attention_cpu::Pair pair(N, D);
        #pragma omp for schedule(static)
        for (int64 bh = 0; bh < B * H; bh++) {
            const int64 b = bh / H, h = bh % H;
            pair.probabilities(x, b, h, sc);
            // this head's y rows (C floats apart) = P v
            attention_cpu::gemm(N, D, N, {pair.p.data(), ldp, 1}, pair.v.data(), D, yp + b * N * C + h * D, C);
        }
    }
}

#endif
#endif // JIT

} // jittor
