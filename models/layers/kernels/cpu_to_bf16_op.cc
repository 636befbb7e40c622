// See cpu_to_bf16_op.h for why this op exists.
#include <cstdint>

#include "var.h"
#include "ops/op_register.h"
#include "cpu_to_bf16_op.h"
#include "cpu_bf16.h"

namespace jittor {

#ifndef JIT

CpuToBf16Op::CpuToBf16Op(Var* x) : x(x) {
    ASSERT(x->dtype() == ns_float32) << "cpu_to_bf16 converts float32 only, got" << x->dtype();
    y = create_output(nullptr, ns_bfloat16);
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
}

void CpuToBf16Op::infer_shape() { y->set_shape(x->shape); }

void CpuToBf16Op::jit_prepare(JK& jk) { jk << "«T:" << x->dtype(); }

#else // JIT
#ifdef JIT_cpu

void CpuToBf16Op::jit_run() {
    bf16_math::to_bf16(x->ptr<float>(), (uint16_t*)y->mem_ptr, (size_t)x->num);
}

#endif
#endif // JIT

} // jittor
