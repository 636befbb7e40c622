// Batched matrix multiply on the CPU through oneDNN's matmul primitive.
//
// Jittor's own CPU path for 3-D/4-D matmuls is a broadcast-multiply-reduce
// kernel; only 2-D products reach oneDNN (mkl_matmul). Attention needs
// (B*H, N, D) x (B*H, D, N) products, so this op hands the whole batch to a
// single oneDNN matmul primitive, which threads over the batch itself.
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct DnnlBmmOp : Op {
    Var* a, * b, * c;
    // optional (k,) bias added to every row inside the GEMM (linear layers: no separate pass over
    // the output); nullptr when absent
    Var* bias;
    // Transposes are expressed as strides in the oneDNN memory descriptors,
    // so k^T and the transposed operands of the gradients are never copied.
    bool trans_a, trans_b;
    // bf16: the operands are rounded to bfloat16 inside the op and multiplied by oneDNN's bf16
    // kernels with fp32 accumulation and an fp32 result (mixed precision on a CPU with native
    // bf16 instructions, about twice fp32's GEMM rate); inputs and output stay float32 Vars.
    bool bf16;
    DnnlBmmOp(Var* a, Var* b, bool trans_a, bool trans_b, bool bf16=false);
    DnnlBmmOp(Var* a, Var* b, Var* bias, bool trans_a, bool trans_b, bool bf16=false);

    const char* name() const override { return "dnnl_bmm"; }
    void infer_shape() override;
    VarPtr grad(Var* out, Var* dout, Var* v, int v_index) override;
    DECLARE_jit_run;
};

} // jittor
