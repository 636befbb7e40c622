// See cpu_dwconv_nhwc_grad_x_op.h.
#include "var.h"
#include "cpu_dwconv_nhwc_grad_x_op.h"
#include "cpu_dwconv_nhwc.h"

namespace jittor {

#ifndef JIT

CpuDwconvNhwcGradXOp::CpuDwconvNhwcGradXOp(Var* dy, Var* w) : dy(dy), w(w) {
    dx = create_output(nullptr, dy->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
}

void CpuDwconvNhwcGradXOp::infer_shape() { dx->set_shape(dy->shape); }

void CpuDwconvNhwcGradXOp::jit_prepare(JK& jk) { jk << "«T:" << dy->dtype(); }

#else // JIT
#ifdef JIT_cpu

void CpuDwconvNhwcGradXOp::jit_run() {
    // input (ih, iw) received dy(oh, ow) * w(i, j) from every output with oh = ih - i + P: the
    // forward's correlation with the kernel flipped, and no bias
    const int64 B = dy->shape[0], H = dy->shape[1], W = dy->shape[2], C = dy->shape[3], K = w->shape[2];
    auto taps = dwconv_nhwc::taps_channels_last(w->ptr<float>(), C, K);
    dwconv_nhwc::correlate(dy->ptr<float>(), taps.data(), nullptr, dx->ptr<float>(), B, H, W, C, K, true);
}

#endif
#endif // JIT

} // jittor
