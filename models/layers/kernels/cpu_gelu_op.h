// GELU (the exact, erf form) on the CPU, forward and backward, one pass each.
//
// Jittor computes 0.5 x (1 + erf(x / sqrt 2)) with a scalar std::erf per element, and its
// gradient with std::erf and std::exp again: ~15 % of the demo's training step went to
// GELU. Here Phi(x) = 0.5 (1 + erf(x / sqrt 2)) and its density come from one vectorisable
// exp and the Abramowitz-Stegun 7.1.26 erfc approximation (absolute error < 1.5e-7 in erf),
// written so that no term cancels: Phi(x) for x < 0 is the erfc product itself, 1 minus it
// for x >= 0. Shared by both ops (cpu_gelu_math.h).
//
// With a bias (the preceding linear layer's, over the last axis) it is GELU(x + bias): the
// MLP's fc1 output then needs no separate bias pass, and the backward op returns the bias
// gradient as well, summed while it writes dx (models.layers.linear.deferred_bias).
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuGeluOp : Op {
    Var* x, * bias, * y;   // bias: nullptr, or (C,) with x (..., C)
    CpuGeluOp(Var* x);
    CpuGeluOp(Var* x, Var* bias);

    const char* name() const override { return "cpu_gelu"; }
    void infer_shape() override;
    VarPtr grad(Var* out, Var* dout, Var* v, int v_index) override;
    // with a bias: both gradients from one backward op (grad() would be asked once per input)
    void grads(Var** douts, VarPtr* dins) override;
    DECLARE_jit_run;
};

} // jittor
