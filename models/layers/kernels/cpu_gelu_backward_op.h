// The gradient of cpu_gelu (cpu_gelu_op.h): dx = dy (Phi(x) + x phi(x)), one pass.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuGeluBackwardOp : Op {
    Var* x, * dy, * dx;
    CpuGeluBackwardOp(Var* x, Var* dy);

    const char* name() const override { return "cpu_gelu_backward"; }
    void infer_shape() override;
    DECLARE_jit_run;
};

} // jittor
