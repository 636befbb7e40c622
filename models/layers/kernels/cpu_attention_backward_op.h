// The gradient of cpu_attention (cpu_attention_op.h) with respect to the packed qkv.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuAttentionBackwardOp : Op {
    Var* qkv, * dy, * dqkv;
    int heads;
    float64 scale;
    CpuAttentionBackwardOp(Var* qkv, Var* dy, int heads, float64 scale);

    const char* name() const override { return "cpu_attention_backward"; }
    void infer_shape() override;
    DECLARE_jit_run;
};

} // jittor
