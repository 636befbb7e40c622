// See cpu_dwconv_nhwc_op.h.
#include <algorithm>
#include <vector>

#include "var.h"
#include "ops/op_register.h"
#include "cpu_dwconv_nhwc_op.h"

namespace jittor {

#ifndef JIT

CpuDwconvNhwcOp::CpuDwconvNhwcOp(Var* x, Var* w, Var* b) : x(x), w(w), b(b) {
    ASSERT(x->dtype() == ns_float32 && w->dtype() == ns_float32 && b->dtype() == ns_float32)
        << "cpu_dwconv_nhwc supports float32 only";
    y = create_output(nullptr, x->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
    x->flags.set(NodeFlags::_needed_by_backward);
    w->flags.set(NodeFlags::_needed_by_backward);
}

VarPtr CpuDwconvNhwcOp::grad(Var* out, Var* dout, Var* v, int v_index) {
    static auto make_grad_x = get_op_info("cpu_dwconv_nhwc_grad_x")
        .get_constructor<VarPtr, Var*, Var*>();
    static auto make_grad_w = get_op_info("cpu_dwconv_nhwc_grad_w")
        .get_constructor<VarPtr, Var*, Var*, int>();
    static auto make_reduce = get_op_info("reduce")
        .get_constructor<VarPtr, Var*, NanoString, NanoVector, bool>();
    if (v_index == 0) return make_grad_x(dout, w);
    if (v_index == 1) return make_grad_w(x, dout, (int)w->shape[2]);
    return make_reduce(dout, ns_add, NanoVector(0, 1, 2), false);
}

void CpuDwconvNhwcOp::infer_shape() {
    ASSERTop(x->shape.size(),==,4);
    ASSERTop(w->shape.size(),==,4);
    auto c = x->shape[3];
    ASSERT(w->shape[0] == c && w->shape[1] == 1 && w->shape[2] == w->shape[3] && w->shape[2] % 2 == 1)
        << "cpu_dwconv_nhwc: weight must be (C, 1, k, k) with odd k, got" << w->shape << "for C =" << c;
    ASSERT(b->shape.size() == 1 && b->shape[0] == c) << "cpu_dwconv_nhwc: bias must be (C,), got" << b->shape;
    y->set_shape(x->shape);
}

void CpuDwconvNhwcOp::jit_prepare(JK& jk) { jk << "«T:" << x->dtype(); }

#else // JIT
#ifdef JIT_cpu

void CpuDwconvNhwcOp::jit_run() {
    const int64 B = x->shape[0], H = x->shape[1], W = x->shape[2], C = x->shape[3];
    const int64 K = w->shape[2], P = K / 2;
    const float* __restrict__ xp = x->ptr<float>();
    const float* __restrict__ wp = w->ptr<float>();
    const float* __restrict__ bp = b->ptr<float>();
    float* __restrict__ yp = y->ptr<float>();
    // (C, 1, K, K) -> (K, K, C): each tap's channel weights contiguous
    std::vector<float> wt(K * K * C);
    for (int64 c = 0; c < C; c++)
        for (int64 t = 0; t < K * K; t++) wt[t * C + c] = wp[c * K * K + t];
    const float* __restrict__ wtp = wt.data();
    #pragma omp parallel for schedule(static)
    for (int64 bh = 0; bh < B * H; bh++) {
        int64 bi = bh / H, h = bh % H;
        for (int64 ow = 0; ow < W; ow++) {
            float* __restrict__ out = yp + ((bi * H + h) * W + ow) * C;
            #pragma omp simd
            for (int64 c = 0; c < C; c++) out[c] = bp[c];
            for (int64 i = 0; i < K; i++) {
                int64 ih = h + i - P;
                if (ih < 0 || ih >= H) continue;
                for (int64 j = 0; j < K; j++) {
                    int64 iw = ow + j - P;
                    if (iw < 0 || iw >= W) continue;
                    const float* __restrict__ in = xp + ((bi * H + ih) * W + iw) * C;
                    const float* __restrict__ tap = wtp + (i * K + j) * C;
                    #pragma omp simd
                    for (int64 c = 0; c < C; c++) out[c] += in[c] * tap[c];
                }
            }
        }
    }
}

#endif
#endif // JIT

} // jittor
