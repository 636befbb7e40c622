// See cpu_softmax_backward_op.h.
#include "var.h"
#include "cpu_softmax_backward_op.h"

using namespace std;

namespace jittor {

#ifndef JIT

CpuSoftmaxBackwardOp::CpuSoftmaxBackwardOp(Var* y, Var* dy) : y(y), dy(dy) {
    dx = create_output(nullptr, y->dtype());
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
}

void CpuSoftmaxBackwardOp::infer_shape() {
    ASSERT(y->shape == dy->shape) << "cpu_softmax_backward: shape mismatch" << y->shape << dy->shape;
    dx->set_shape(y->shape);
}

void CpuSoftmaxBackwardOp::jit_prepare(JK& jk) {
    jk << "«T:" << y->dtype();
}

#else // JIT
#ifdef JIT_cpu
void CpuSoftmaxBackwardOp::jit_run() {
    const auto& s = y->shape;
    int64 cols = s[s.size()-1];
    int64 rows = cols ? y->num / cols : 0;
    const T* __restrict__ yp = y->ptr<T>();
    const T* __restrict__ gp = dy->ptr<T>();
    T* __restrict__ dp = dx->ptr<T>();
    #pragma omp parallel for schedule(static)
    for (int64 r = 0; r < rows; r++) {
        const T* yr = yp + r * cols;
        const T* gr = gp + r * cols;
        T* dr = dp + r * cols;
        T dot = 0;
        for (int64 i = 0; i < cols; i++) dot += yr[i] * gr[i];
        for (int64 i = 0; i < cols; i++) dr[i] = yr[i] * (gr[i] - dot);
    }
}
#endif
#endif // JIT

} // jittor
