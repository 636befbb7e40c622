// See cpu_dwconv_nhwc_grad_x_op.h.
#include <vector>

#include "var.h"
#include "cpu_dwconv_nhwc_grad_x_op.h"

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
    const int64 B = dy->shape[0], H = dy->shape[1], W = dy->shape[2], C = dy->shape[3];
    const int64 K = w->shape[2], P = K / 2;
    const float* __restrict__ gp = dy->ptr<float>();
    const float* __restrict__ wp = w->ptr<float>();
    float* __restrict__ dp = dx->ptr<float>();
    std::vector<float> wt(K * K * C);
    for (int64 c = 0; c < C; c++)
        for (int64 t = 0; t < K * K; t++) wt[t * C + c] = wp[c * K * K + t];
    const float* __restrict__ wtp = wt.data();
    // input (ih, iw) received dy(oh, ow) * w(i, j) from every output with oh = ih - i + P
    #pragma omp parallel for schedule(static)
    for (int64 bh = 0; bh < B * H; bh++) {
        int64 bi = bh / H, ih = bh % H;
        for (int64 iw = 0; iw < W; iw++) {
            float* __restrict__ out = dp + ((bi * H + ih) * W + iw) * C;
            #pragma omp simd
            for (int64 c = 0; c < C; c++) out[c] = 0.f;
            for (int64 i = 0; i < K; i++) {
                int64 oh = ih - i + P;
                if (oh < 0 || oh >= H) continue;
                for (int64 j = 0; j < K; j++) {
                    int64 ow = iw - j + P;
                    if (ow < 0 || ow >= W) continue;
                    const float* __restrict__ g = gp + ((bi * H + oh) * W + ow) * C;
                    const float* __restrict__ tap = wtp + (i * K + j) * C;
                    #pragma omp simd
                    for (int64 c = 0; c < C; c++) out[c] += g[c] * tap[c];
                }
            }
        }
    }
}

#endif
#endif // JIT

} // jittor
