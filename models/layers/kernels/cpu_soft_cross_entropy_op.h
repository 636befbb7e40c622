// Cross-entropy of logits against soft targets over the last axis, on the CPU:
// loss = -sum_k p_k log softmax(s)_k = sum(p) * logsumexp(s) - sum_k p_k s_k, per row.
//
// DINO / iBOT compare every student output row (8192 prototypes) with a teacher distribution.
// Jittor's log_softmax, product and sum are several kernels that each stream the rows, and their
// gradient as many again (18 ns per element forward + backward on a 2-core AMD EPYC, ~10 % of an
// iBOT + HSSL step); here forward and backward each read a row a few times while it is in cache.
// p is the target: it gets no gradient (the teacher's probabilities are detached).
#pragma once
#include "op.h"
#include "var.h"

namespace jittor {

struct CpuSoftCrossEntropyOp : Op {
    Var* p, * s, * loss;
    CpuSoftCrossEntropyOp(Var* p, Var* s);

    const char* name() const override { return "cpu_soft_cross_entropy"; }
    void infer_shape() override;
    VarPtr grad(Var* out, Var* dout, Var* v, int v_index) override;
    DECLARE_jit_run;
};

} // jittor
