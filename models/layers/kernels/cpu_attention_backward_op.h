// The gradient of cpu_attention (cpu_attention_op.h) with respect to the packed qkv; with the
// projection's bias also the bias's, the column sums of dqkv, summed per (image, head) as it is written.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuAttentionBackwardOp : Op {
    Var* qkv, * bias, * dy, * dqkv, * dbias;   // bias, dbias: nullptr without a bias
    int heads;
    float64 scale;
    CpuAttentionBackwardOp(Var* qkv, Var* dy, int heads, float64 scale);
    // @attrs(multiple_outputs)
    CpuAttentionBackwardOp(Var* qkv, Var* bias, Var* dy, int heads, float64 scale);

    const char* name() const override { return "cpu_attention_backward"; }
    void infer_shape() override;
    DECLARE_jit_run;
};

} // jittor
