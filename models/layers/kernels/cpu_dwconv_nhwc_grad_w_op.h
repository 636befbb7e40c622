// Weight gradient of cpu_dwconv_nhwc (see cpu_dwconv_nhwc_op.h): dw[c, 0, i, j] = sum over
// images and positions of dy * the input shifted by (i, j); one partial sum per thread, added
// at the end. Output in nn.Conv2d's (C, 1, k, k) layout.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuDwconvNhwcGradWOp : Op {
    Var* x, * dy, * dw;
    int ksize;
    CpuDwconvNhwcGradWOp(Var* x, Var* dy, int ksize);

    const char* name() const override { return "cpu_dwconv_nhwc_grad_w"; }
    void infer_shape() override;
    DECLARE_jit_run;
};

} // jittor
