// Gradient of cpu_soft_cross_entropy with respect to the logits (see cpu_soft_cross_entropy_op.h):
// ds_k = g * (sum(p) * softmax(s)_k - p_k) per row, g the row's incoming gradient.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuSoftCrossEntropyBackwardOp : Op {
    Var* p, * s, * g, * ds;
    CpuSoftCrossEntropyBackwardOp(Var* p, Var* s, Var* g);

    const char* name() const override { return "cpu_soft_cross_entropy_backward"; }
    void infer_shape() override;
    DECLARE_jit_run;
};

} // jittor
