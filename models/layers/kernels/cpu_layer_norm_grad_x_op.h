// Input gradient of cpu_layer_norm, one pass per row:
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuLayerNormGradXOp : Op {
    Var* x, * w, * dy, * dx;
    float64 eps;
    CpuLayerNormGradXOp(Var* x, Var* w, Var* dy, float64 eps);

    const char* name() const override { return "cpu_layer_norm_grad_x"; }
    void infer_shape() override;
    DECLARE_jit_run;
};

} // jittor
