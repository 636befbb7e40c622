// See cpu_attention_op.h for why this op exists.
#include <vector>

#include "var.h"
#include "ops/op_register.h"
#include "cpu_attention_op.h"
#include "cpu_attention.h"

namespace jittor {

#ifndef JIT

CpuAttentionOp::CpuAttentionOp(Var* qkv, int heads, float64 scale) : qkv(qkv), heads(heads), scale(scale) {
    ASSERT(qkv->dtype() == ns_float32) << "cpu_attention supports float32 only, got" << qkv->dtype();
    y = create_output(nullptr, qkv->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
    qkv->flags.set(NodeFlags::_needed_by_backward);   // the backward recomputes the probabilities
}

VarPtr CpuAttentionOp::grad(Var* out, Var* dout, Var* v, int v_index) {
    static auto make_backward = get_op_info("cpu_attention_backward")
        .get_constructor<VarPtr, Var*, Var*, int, float64>();
    return make_backward(qkv, dout, heads, scale);
}

void CpuAttentionOp::infer_shape() {
    ASSERTop(qkv->shape.size(),==,3);
    ASSERT(heads > 0 && qkv->shape[2] % (3 * heads) == 0)
        << "cpu_attention: last dim" << qkv->shape[2] << "is not 3 x heads x D, heads =" << heads;
    y->set_shape({qkv->shape[0], qkv->shape[1], qkv->shape[2] / 3});
}

void CpuAttentionOp::jit_prepare(JK& jk) { jk << "«T:" << qkv->dtype(); }

#else // JIT
#ifdef JIT_cpu

void CpuAttentionOp::jit_run() {
    const int64 B = qkv->shape[0], N = qkv->shape[1], C = qkv->shape[2] / 3, H = heads, D = C / H;
    const int64 ldp = attention_cpu::padded(N);
    const attention_cpu::Packed x{N, C, D, qkv->ptr<float>()};
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
