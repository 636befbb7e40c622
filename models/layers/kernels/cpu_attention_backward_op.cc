// See cpu_attention_backward_op.h.
#include <vector>

#include "var.h"
#include "cpu_attention_backward_op.h"
#include "cpu_attention.h"
#include "cpu_column_sums.h"

namespace jittor {

#ifndef JIT

CpuAttentionBackwardOp::CpuAttentionBackwardOp(Var* qkv, Var* dy, int heads, float64 scale)
    : qkv(qkv), bias(nullptr), dy(dy), dbias(nullptr), heads(heads), scale(scale) {
    dqkv = create_output(nullptr, qkv->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
}

CpuAttentionBackwardOp::CpuAttentionBackwardOp(Var* qkv, Var* bias, Var* dy, int heads, float64 scale)
    : CpuAttentionBackwardOp(qkv, dy, heads, scale) {
    this->bias = bias;
    dbias = create_output(nullptr, bias->dtype());
}

void CpuAttentionBackwardOp::infer_shape() {
    ASSERTop(qkv->shape.size(),==,3);
    ASSERT(dy->shape.size() == 3 && dy->shape[0] == qkv->shape[0] && dy->shape[1] == qkv->shape[1]
           && dy->shape[2] * 3 == qkv->shape[2]) << "cpu_attention_backward: shapes" << qkv->shape << dy->shape;
    dqkv->set_shape(qkv->shape);
    if (bias) dbias->set_shape(bias->shape);
}

void CpuAttentionBackwardOp::jit_prepare(JK& jk) {
    jk << "«T:" << qkv->dtype();
    jk << "«Bias:" << (bias ? '1' : '0');
}

#else // JIT
#ifdef JIT_cpu

// With P = softmax(S), S = q k^T * scale, y = P v (one image, one head):
//   dv_j = sum_i P_ij dy_i;  dP_ij = dy_i . v_j;  dS_ij = P_ij (dP_ij - sum_l P_il dP_il);
//   dq_i = scale sum_j dS_ij k_j;  dk_j = scale sum_i dS_ij q_i.
void CpuAttentionBackwardOp::jit_run() {
    const int64 B = qkv->shape[0], N = qkv->shape[1], C = qkv->shape[2] / 3, H = heads, D = C / H;
    const int64 ldp = attention_cpu::padded(N);
    const attention_cpu::Packed x{N, C, D, qkv->ptr<float>(), @Bias ? bias->ptr<float>() : nullptr};
    const float* __restrict__ gp = dy->ptr<float>();
    float* __restrict__ dp = dqkv->ptr<float>();
    const float sc = (float)scale;
    column_sums::PerThread sums(@Bias ? 3 * C : 0);   // dbias: the column sums of dqkv
    #pragma omp parallel
    {
        float* __restrict__ acc = sums.mine();
        attention_cpu::Pair pair(N, D);
        std::vector<float> g(N * D), vt(D * ldp), ds(N * ldp);
        #pragma omp for schedule(static)
        for (int64 bh = 0; bh < B * H; bh++) {
            const int64 b = bh / H, h = bh % H;
            pair.probabilities(x, b, h, sc);
            const float* p = pair.p.data();
            attention_cpu::copy_rows(gp + b * N * C + h * D, C, N, D, g.data());   // this head's dy
            attention_cpu::transpose_padded(pair.v.data(), N, D, vt.data(), ldp);
            attention_cpu::gemm(N, ldp, D, {g.data(), D, 1}, vt.data(), ldp, ds.data(), ldp);   // dP = dy v^T
            for (int64 i = 0; i < N; i++) {
                const float* __restrict__ pi = p + i * ldp;
                float* __restrict__ dsi = ds.data() + i * ldp;
                float row = 0.f;
                #pragma omp simd reduction(+:row)
                for (int64 j = 0; j < N; j++) row += pi[j] * dsi[j];
                #pragma omp simd
                for (int64 j = 0; j < N; j++) dsi[j] = pi[j] * (dsi[j] - row) * sc;   // dS, times scale
            }
            float* dq = dp + b * N * 3 * C + h * D;   // this head's dq rows, 3C floats apart; dk, dv C after
            attention_cpu::gemm(N, D, N, {p, 1, ldp}, g.data(), D, dq + 2 * C, 3 * C);                  // dv = P^T dy
            attention_cpu::gemm(N, D, N, {ds.data(), ldp, 1}, pair.k.data(), D, dq, 3 * C);            // dq = dS k
            attention_cpu::gemm(N, D, N, {ds.data(), 1, ldp}, pair.q.data(), D, dq + C, 3 * C);        // dk = dS^T q
            if (@Bias)
                for (int part = 0; part < 3; part++)   // this head's columns of dq, dk, dv, still in cache
                    column_sums::add_rows(dq + part * C, 3 * C, N, D, acc + part * C + h * D);
        }
    }
    if (@Bias) sums.sum_into(dbias->ptr<float>());
}

#endif
#endif // JIT

} // jittor
