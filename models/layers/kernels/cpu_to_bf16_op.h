// A float32 Var rounded to a bfloat16 Var (round to nearest even), CPU.
//
// Under CPU mixed precision a linear layer's input takes part in two bf16 products: the forward
// (x W^T) and the weight gradient (dy^T x), and the output gradient dy in two more (dx = dy W and
// the weight gradient). dnnl_bmm rounds float32 operands itself, once per product; rounding x and
// dy here once each (models/layers/linear.py) saves the repeated passes, and the layer keeps the
// 2-byte copy of x for its backward instead of the 4-byte one. Same rounding as dnnl_bmm's
// (cpu_bf16.h), so the products are bit for bit those of the float32 operands.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuToBf16Op : Op {
    Var* x, * y;
    CpuToBf16Op(Var* x);

    const char* name() const override { return "cpu_to_bf16"; }
    void infer_shape() override;
    DECLARE_jit_run;
};

} // jittor
