// Input gradient of cpu_dwconv_nhwc (see cpu_dwconv_nhwc_op.h): dx = dy correlated with the
// flipped kernel, same loop shape as the forward.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuDwconvNhwcGradXOp : Op {
    Var* dy, * w, * dx;
    CpuDwconvNhwcGradXOp(Var* dy, Var* w);

    const char* name() const override { return "cpu_dwconv_nhwc_grad_x"; }
    void infer_shape() override;
    DECLARE_jit_run;
};

} // jittor
