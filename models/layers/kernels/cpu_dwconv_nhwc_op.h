// Depthwise 2-D convolution (stride 1, "same" padding k/2, odd k) on channels-last input, CPU.
//
// The ConvNext auxiliary head mixes its (B, H, W, C) tokens with a 7x7 depthwise conv. Through
// nn.Conv2d that is two transposes and oneDNN's plain-layout (NCHW) depthwise kernels, whose
// weight gradient took ~17 ms per call on the demo's 4x4 maps (~100 ms of a 0.9 s step for
// 12.6 MFLOP). Here each output row is a sum of shifted input rows times a per-channel weight,
// vectorised over the channels, with no transposes. Three ops: this forward, the input gradient
// (cpu_dwconv_nhwc_grad_x) and the weight gradient (cpu_dwconv_nhwc_grad_w); the bias gradient
// is a reduction. The weight keeps nn.Conv2d's (C, 1, k, k) layout and keys.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuDwconvNhwcOp : Op {
    Var* x, * w, * b, * y;
    CpuDwconvNhwcOp(Var* x, Var* w, Var* b);

    const char* name() const override { return "cpu_dwconv_nhwc"; }
    void infer_shape() override;
    VarPtr grad(Var* out, Var* dout, Var* v, int v_index) override;
    DECLARE_jit_run;
};

} // jittor
