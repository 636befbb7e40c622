// Weight (sum over rows of dy * xhat) or bias (sum over rows of dy) gradient
// of cpu_layer_norm; each thread sums its own rows, then the partial sums are
// added.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuLayerNormGradWbOp : Op {
    Var* x, * dy, * out;
    float64 eps;
    bool bias;
    CpuLayerNormGradWbOp(Var* x, Var* dy, float64 eps, bool bias);

    const char* name() const override { return "cpu_layer_norm_grad_wb"; }
    void infer_shape() override;
    DECLARE_jit_run;
};

} // jittor
