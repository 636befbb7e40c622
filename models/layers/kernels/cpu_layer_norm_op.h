// LayerNorm over the last axis on the CPU in one pass per row (statistics and
// normalisation while the row is in cache).
//
// Jittor's nn.LayerNorm is two reductions (mean of x and of x*x) plus a
// broadcast normalise, and its gradient adds several more full passes; in a
// ViT step those kernels were ~12% of the time.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuLayerNormOp : Op {
    Var* x, * w, * b, * y;
    float64 eps;
    CpuLayerNormOp(Var* x, Var* w, Var* b, float64 eps);

    const char* name() const override { return "cpu_layer_norm"; }
    void infer_shape() override;
    VarPtr grad(Var* out, Var* dout, Var* v, int v_index) override;
    DECLARE_jit_run;
};

} // jittor
