// Self-attention on the CPU straight from the packed qkv projection: (B, N, 3 * H * D) ->
// softmax(q k^T * scale) v as (B, N, H * D), one (image, head) pair per task with its N x N
// scores in cache (up to models.layers.attention.FUSED_MAX_TOKENS tokens).
//
// The batched-GEMM path runs each few-token (N x D) @ (D x N) product at a few GFLOP/s (oneDNN's
// per-call cost dominates) and permutes q, k, v and the output through memory; at ViT-S/16's 197
// tokens it still costs 1.5x this op. The backward op recomputes the probabilities from q and k
// instead of keeping a (B, H, N, N) tensor.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuAttentionOp : Op {
    Var* qkv, * bias, * y;   // bias: nullptr, or qkv's (3 * H * D,) bias not yet added to it
    int heads;
    float64 scale;
    CpuAttentionOp(Var* qkv, int heads, float64 scale);
    CpuAttentionOp(Var* qkv, Var* bias, int heads, float64 scale);

    const char* name() const override { return "cpu_attention"; }
    void infer_shape() override;
    VarPtr grad(Var* out, Var* dout, Var* v, int v_index) override;
    // with a bias: both gradients from one backward op (grad() would be asked once per input)
    void grads(Var** douts, VarPtr* dins) override;
    DECLARE_jit_run;
};

} // jittor
