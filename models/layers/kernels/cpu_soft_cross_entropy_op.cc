// See cpu_soft_cross_entropy_op.h for why this op exists.
#include "var.h"
#include "ops/op_register.h"
#include "cpu_soft_cross_entropy_op.h"
#include "cpu_soft_cross_entropy.h"

using namespace std;

namespace jittor {

#ifndef JIT

CpuSoftCrossEntropyOp::CpuSoftCrossEntropyOp(Var* p, Var* s) : p(p), s(s) {
    ASSERT(p->dtype() == ns_float32 && s->dtype() == ns_float32)
        << "cpu_soft_cross_entropy supports float32 only, got" << p->dtype() << s->dtype();
    loss = create_output(nullptr, s->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
    p->flags.set(NodeFlags::_needed_by_backward);
    s->flags.set(NodeFlags::_needed_by_backward);
}

VarPtr CpuSoftCrossEntropyOp::grad(Var* out, Var* dout, Var* v, int v_index) {
    if (v_index == 0) return nullptr;  // the target p: no gradient (see the header)
    static auto make_backward = get_op_info("cpu_soft_cross_entropy_backward")
        .get_constructor<VarPtr, Var*, Var*, Var*>();
    return make_backward(p, s, dout);
}

void CpuSoftCrossEntropyOp::infer_shape() {
    ASSERT(p->shape == s->shape) << "cpu_soft_cross_entropy: target and logits differ in shape"
        << p->shape << s->shape;
    ASSERTop(s->shape.size(),>=,2);
    NanoVector rows;
    for (int i = 0; i + 1 < (int)s->shape.size(); i++) rows.push_back(s->shape[i]);
    loss->set_shape(rows);
}

void CpuSoftCrossEntropyOp::jit_prepare(JK& jk) {
    jk << "«T:" << s->dtype();
}

#else // JIT
#ifdef JIT_cpu
void CpuSoftCrossEntropyOp::jit_run() {
    const auto& sh = s->shape;
    int64 cols = sh[sh.size()-1];
    int64 rows = cols ? s->num / cols : 0;
    const T* __restrict__ sp = s->ptr<T>();
    const T* __restrict__ pp = p->ptr<T>();
    T* __restrict__ lp = loss->ptr<T>();
    #pragma omp parallel for schedule(static)
    for (int64 r = 0; r < rows; r++) {
        auto st = soft_ce::row_stats(sp + r * cols, pp + r * cols, cols);
        lp[r] = st.psum * st.lse - st.pdot;
    }
}
#endif
#endif // JIT

} // jittor
