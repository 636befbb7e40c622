// The gradient of cpu_gelu (cpu_gelu_op.h): dx = dy (Phi(h) + h phi(h)), h = x (+ bias), one pass;
// with a bias also dbias, the column sums of dx.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuGeluBackwardOp : Op {
    Var* x, * bias, * dy, * dx, * dbias;   // bias, dbias: nullptr without a bias
    CpuGeluBackwardOp(Var* x, Var* dy);
    // @attrs(multiple_outputs)
    CpuGeluBackwardOp(Var* x, Var* bias, Var* dy);

    const char* name() const override { return "cpu_gelu_backward"; }
    void infer_shape() override;
    DECLARE_jit_run;
};

} // jittor
