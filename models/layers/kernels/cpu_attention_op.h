// Self-attention of short sequences on the CPU, straight from the packed qkv projection:
// (B, N, 3 * H * D) -> softmax(q k^T * scale) v as (B, N, H * D), one (image, head) pair per
// task with its N x N scores in cache.
//
// At a few dozen tokens (a ViT on 28-32 px images, Swin's 7x7 windows) the batched-GEMM path
// runs each (N x D) @ (D x N) product at a few GFLOP/s (oneDNN's per-call cost dominates) and
// permutes q, k, v and the output through memory: ~20 % of the demo's step. The backward op
// recomputes the probabilities from q and k instead of keeping a (B, H, N, N) tensor.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuAttentionOp : Op {
    Var* qkv, * y;
    int heads;
    float64 scale;
    CpuAttentionOp(Var* qkv, int heads, float64 scale);

    const char* name() const override { return "cpu_attention"; }
    void infer_shape() override;
    VarPtr grad(Var* out, Var* dout, Var* v, int v_index) override;
    DECLARE_jit_run;
};

} // jittor
