// Row-wise softmax over the last axis on the CPU, forward and backward, each
// in one pass over memory per row.
//
// Jittor's generic softmax is max-reduce, exp+sum-reduce, exp+divide: three
// kernels that each stream the (B*H, N, N) attention matrix, and its
// gradient adds three more. Here a row stays in cache between its max, sum
// and normalisation.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuSoftmaxOp : Op {
    Var* x, * y;
    CpuSoftmaxOp(Var* x);

    const char* name() const override { return "cpu_softmax"; }
    void infer_shape() override;
    VarPtr grad(Var* out, Var* dout, Var* v, int v_index) override;
    DECLARE_jit_run;
};

} // jittor
