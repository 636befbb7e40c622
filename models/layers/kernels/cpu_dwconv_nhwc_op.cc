// See cpu_dwconv_nhwc_op.h.
#include "var.h"
#include "ops/op_register.h"
#include "cpu_dwconv_nhwc_op.h"
#include "cpu_dwconv_nhwc.h"

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
    const int64 B = x->shape[0], H = x->shape[1], W = x->shape[2], C = x->shape[3], K = w->shape[2];
    auto taps = dwconv_nhwc::taps_channels_last(w->ptr<float>(), C, K);
    dwconv_nhwc::correlate(x->ptr<float>(), taps.data(), b->ptr<float>(), y->ptr<float>(), B, H, W, C, K, false);
}

#endif
#endif // JIT

} // jittor
