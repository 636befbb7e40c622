// See cpu_soft_cross_entropy_backward_op.h.
#include "var.h"
#include "cpu_soft_cross_entropy_backward_op.h"
#include "cpu_soft_cross_entropy.h"

using namespace std;

namespace jittor {

#ifndef JIT

CpuSoftCrossEntropyBackwardOp::CpuSoftCrossEntropyBackwardOp(Var* p, Var* s, Var* g) : p(p), s(s), g(g) {
    ds = create_output(nullptr, s->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
}

void CpuSoftCrossEntropyBackwardOp::infer_shape() {
    ASSERT(p->shape == s->shape) << "cpu_soft_cross_entropy_backward: shape mismatch" << p->shape << s->shape;
    ASSERTop(g->num * s->shape[s->shape.size()-1],==,s->num);
    ds->set_shape(s->shape);
}

void CpuSoftCrossEntropyBackwardOp::jit_prepare(JK& jk) {
    jk << "«T:" << s->dtype();
}

#else // JIT
#ifdef JIT_cpu
void CpuSoftCrossEntropyBackwardOp::jit_run() {
    const auto& sh = s->shape;
    int64 cols = sh[sh.size()-1];
    int64 rows = cols ? s->num / cols : 0;
    const T* __restrict__ sp = s->ptr<T>();
    const T* __restrict__ pp = p->ptr<T>();
    const T* __restrict__ gp = g->ptr<T>();
    T* __restrict__ dp = ds->ptr<T>();
    #pragma omp parallel for schedule(static)
    for (int64 r = 0; r < rows; r++) {
        const T* sr = sp + r * cols;
        const T* pr = pp + r * cols;
        T* dr = dp + r * cols;
        auto st = soft_ce::row_stats(sr, pr, cols);
        const float scale = gp[r] * st.psum, gr = gp[r];
        #pragma omp simd
        for (int64 i = 0; i < cols; i++)
            dr[i] = scale * fast_math::exp_nonpositive(sr[i] - st.lse) - gr * pr[i];
    }
}
#endif
#endif // JIT

} // jittor
