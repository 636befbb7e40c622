// See cpu_dwconv_nhwc_grad_w_op.h.
#include <omp.h>
#include <vector>

#include "var.h"
#include "cpu_dwconv_nhwc_grad_w_op.h"

namespace jittor {

#ifndef JIT

CpuDwconvNhwcGradWOp::CpuDwconvNhwcGradWOp(Var* x, Var* dy, int ksize) : x(x), dy(dy), ksize(ksize) {
    dw = create_output(nullptr, x->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
}

void CpuDwconvNhwcGradWOp::infer_shape() {
    ASSERT(x->shape == dy->shape) << "cpu_dwconv_nhwc_grad_w: shape mismatch" << x->shape << dy->shape;
    dw->set_shape({x->shape[3], 1, ksize, ksize});
}

void CpuDwconvNhwcGradWOp::jit_prepare(JK& jk) { jk << "«T:" << x->dtype(); }

#else // JIT
#ifdef JIT_cpu

void CpuDwconvNhwcGradWOp::jit_run() {
    const int64 B = x->shape[0], H = x->shape[1], W = x->shape[2], C = x->shape[3];
    const int64 K = ksize, P = K / 2;
    const float* __restrict__ xp = x->ptr<float>();
    const float* __restrict__ gp = dy->ptr<float>();
    float* __restrict__ dwp = dw->ptr<float>();
    const int nt = omp_get_max_threads();
    // per thread: a (K, K, C) partial sum over its images
    std::vector<float> part((size_t)nt * K * K * C, 0.f);
    #pragma omp parallel num_threads(nt)
    {
        float* __restrict__ acc = part.data() + (size_t)omp_get_thread_num() * K * K * C;
        #pragma omp for schedule(static)
        for (int64 bh = 0; bh < B * H; bh++) {
            int64 bi = bh / H, oh = bh % H;
            for (int64 ow = 0; ow < W; ow++) {
                const float* __restrict__ g = gp + ((bi * H + oh) * W + ow) * C;
                for (int64 i = 0; i < K; i++) {
                    int64 ih = oh + i - P;
                    if (ih < 0 || ih >= H) continue;
                    for (int64 j = 0; j < K; j++) {
                        int64 iw = ow + j - P;
                        if (iw < 0 || iw >= W) continue;
                        const float* __restrict__ in = xp + ((bi * H + ih) * W + iw) * C;
                        float* __restrict__ a = acc + (i * K + j) * C;
                        #pragma omp simd
                        for (int64 c = 0; c < C; c++) a[c] += g[c] * in[c];
                    }
                }
            }
        }
    }
    // sum the partials and write (C, 1, K, K)
    for (int64 c = 0; c < C; c++)
        for (int64 t = 0; t < K * K; t++) {
            float s = 0.f;
            for (int th = 0; th < nt; th++) s += part[((size_t)th * K * K + t) * C + c];
            dwp[c * K * K + t] = s;
        }
}

#endif
#endif // JIT

} // jittor
