// Gradient of cpu_softmax (see cpu_softmax_op.h).
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

// dx = y * (dy - sum(dy * y)) row-wise; y is the forward output.
struct CpuSoftmaxBackwardOp : Op {
    Var* y, * dy, * dx;
    CpuSoftmaxBackwardOp(Var* y, Var* dy);

    const char* name() const override { return "cpu_softmax_backward"; }
    void infer_shape() override;
    DECLARE_jit_run;
};

} // jittor
