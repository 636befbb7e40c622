// See cpu_attention_backward_op.h.
#include <vector>

#include "var.h"
#include "cpu_attention_backward_op.h"
#include "cpu_attention.h"

namespace jittor {

#ifndef JIT

CpuAttentionBackwardOp::CpuAttentionBackwardOp(Var* qkv, Var* dy, int heads, float64 scale)
    : qkv(qkv), dy(dy), heads(heads), scale(scale) {
    dqkv = create_output(nullptr, qkv->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
}

void CpuAttentionBackwardOp::infer_shape() {
    ASSERTop(qkv->shape.size(),==,3);
    ASSERT(dy->shape.size() == 3 && dy->shape[0] == qkv->shape[0] && dy->shape[1] == qkv->shape[1]
           && dy->shape[2] * 3 == qkv->shape[2]) << "cpu_attention_backward: shapes" << qkv->shape << dy->shape;
    dqkv->set_shape(qkv->shape);
}

void CpuAttentionBackwardOp::jit_prepare(JK& jk) { jk << "«T:" << qkv->dtype(); }

#else // JIT
#ifdef JIT_cpu

// With P = softmax(S), S = q k^T * scale, y = P v (one image, one head):
//   dv_j = sum_i P_ij dy_i;  dP_ij = dy_i . v_j;  dS_ij = P_ij (dP_ij - sum_l P_il dP_il);
//   dq_i = scale sum_j dS_ij k_j;  dk_j = scale sum_i dS_ij q_i.
void CpuAttentionBackwardOp::jit_run() {
    const int64 B = qkv->shape[0], N = qkv->shape[1], C = qkv->shape[2] / 3, H = heads, D = C / H;
    const attention_cpu::Packed x{N, C, D, qkv->ptr<float>()};
    const float* __restrict__ gp = dy->ptr<float>();
    float* __restrict__ dp = dqkv->ptr<float>();
    const float sc = (float)scale;
    #pragma omp parallel
    {
        std::vector<float> p(N * N), ds(N * N);
        #pragma omp for schedule(static)
        for (int64 bh = 0; bh < B * H; bh++) {
            const int64 b = bh / H, h = bh % H;
            attention_cpu::probabilities(x, b, h, sc, p.data());
            auto grad_row = [&](int64 i, int part) { return dp + (b * N + i) * 3 * C + part * C + h * D; };
            for (int64 i = 0; i < N; i++)
                for (int part = 0; part < 3; part++) {
                    float* __restrict__ g = grad_row(i, part);
                    #pragma omp simd
                    for (int64 d = 0; d < D; d++) g[d] = 0.f;
                }
            for (int64 i = 0; i < N; i++) {
                const float* __restrict__ gi = gp + (b * N + i) * C + h * D;
                const float* __restrict__ pi = p.data() + i * N;
                float* __restrict__ dsi = ds.data() + i * N;
                attention_cpu::dots(gi, x, b, h, 2, 1.f, dsi);   // dP_ij = dy_i . v_j
                float row = 0.f;
                #pragma omp simd reduction(+:row)
                for (int64 j = 0; j < N; j++) row += pi[j] * dsi[j];
                #pragma omp simd
                for (int64 j = 0; j < N; j++) dsi[j] = pi[j] * (dsi[j] - row) * sc;
                for (int64 j = 0; j < N; j++) {
                    float* __restrict__ dv = grad_row(j, 2);
                    const float pij = pi[j];
                    #pragma omp simd
                    for (int64 d = 0; d < D; d++) dv[d] += pij * gi[d];
                }
            }
            for (int64 i = 0; i < N; i++) {
                const float* __restrict__ q = x.row(b, i, 0, h);
                float* __restrict__ dq = grad_row(i, 0);
                const float* __restrict__ dsi = ds.data() + i * N;
                for (int64 j = 0; j < N; j++) {
                    const float* __restrict__ k = x.row(b, j, 1, h);
                    float* __restrict__ dk = grad_row(j, 1);
                    const float s = dsi[j];
                    #pragma omp simd
                    for (int64 d = 0; d < D; d++) {
                        dq[d] += s * k[d];
                        dk[d] += s * q[d];
                    }
                }
            }
        }
    }
}

#endif
#endif // JIT

} // jittor
