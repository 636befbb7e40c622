// See dnnl_bmm_op.h for why this op exists.
#include <dnnl.hpp>
#include <array>
#include <map>

#include "var.h"
#include "ops/op_register.h"
#include "dnnl_bmm_op.h"

using namespace std;

namespace jittor {

#ifndef JIT

DnnlBmmOp::DnnlBmmOp(Var* a, Var* b, bool trans_a, bool trans_b)
    : a(a), b(b), trans_a(trans_a), trans_b(trans_b) {
    ASSERT(a->dtype() == ns_float32 && b->dtype() == ns_float32)
        << "dnnl_bmm supports float32 only, got" << a->dtype() << b->dtype();
    c = create_output(nullptr, a->dtype());
    // CPU only: the CUDA path uses cuBLAS' batched GEMM from Python.
    flags.set(NodeFlags::_cpu, 1);
    flags.set(NodeFlags::_cuda, 0);
    flags.set(NodeFlags::_manual_set_vnbb);
    a->flags.set(NodeFlags::_needed_by_backward);
    b->flags.set(NodeFlags::_needed_by_backward);
}

VarPtr DnnlBmmOp::grad(Var* out, Var* dout, Var* v, int v_index) {
    // c = op(a) op(b) with op = identity or transpose (per batch item).
    // da = dc op(b)^T (stored transposed when trans_a), db likewise.
    static auto make_bmm = get_op_info("dnnl_bmm")
        .get_constructor<VarPtr, Var*, Var*, bool, bool>();
    if (v_index == 0) {
        if (trans_a)
            return make_bmm(b, dout, trans_b, true);   // da = op(b) dc^T
        return make_bmm(dout, b, false, !trans_b);     // da = dc op(b)^T
    }
    if (trans_b)
        return make_bmm(dout, a, true, trans_a);       // db = dc^T op(a)
    return make_bmm(a, dout, !trans_a, false);         // db = op(a)^T dc
}

void DnnlBmmOp::infer_shape() {
    ASSERTop(a->shape.size(),==,3);
    ASSERTop(b->shape.size(),==,3);
    ASSERTop(a->shape[0],==,b->shape[0]);
    auto n = a->shape[1], m = a->shape[2];
    auto m_ = b->shape[1], k = b->shape[2];
    if (trans_a) swap(n, m);
    if (trans_b) swap(m_, k);
    ASSERTop(m,==,m_);
    c->set_shape({a->shape[0], n, k});
}

void DnnlBmmOp::jit_prepare(JK& jk) {
    jk << "«T:" << a->dtype();
    jk << "«Trans_a:" << (trans_a ? 'T' : 'N');
    jk << "«Trans_b:" << (trans_b ? 'T' : 'N');
}

#else // JIT
#ifdef JIT_cpu
#pragma clang diagnostic ignored "-Wtautological-compare"
void DnnlBmmOp::jit_run() {
    using namespace dnnl;
    const auto& as = a->shape;
    const auto& bs = b->shape;
    memory::dim batch = as[0];
    memory::dim n = as[1], m = as[2], k = bs[2];
    if ('@Trans_a'=='T') { n = as[2]; m = as[1]; }
    if ('@Trans_b'=='T') { k = bs[1]; }
    // a is logically (batch, n, m), b (batch, m, k), c (batch, n, k).
    // A transposed operand is stored (batch, m, n): its logical strides
    // are {n*m, 1, n}.
    memory::dims a_strides = '@Trans_a'=='N' ?
        memory::dims{n*m, m, 1} : memory::dims{n*m, 1, n};
    memory::dims b_strides = '@Trans_b'=='N' ?
        memory::dims{m*k, k, 1} : memory::dims{m*k, 1, m};

    static engine eng(engine::kind::cpu, 0);
    static stream strm(eng);
    // Building a primitive costs far more than small products; a training
    // step uses a handful of shapes, so keep one primitive per shape.
    static map<array<memory::dim,4>, pair<matmul, array<memory::desc,3>>> cache;
    array<memory::dim,4> key{batch, n, m, k};
    auto it = cache.find(key);
    if (it == cache.end()) {
        memory::desc a_md({batch, n, m}, memory::data_type::f32, a_strides);
        memory::desc b_md({batch, m, k}, memory::data_type::f32, b_strides);
        memory::desc c_md({batch, n, k}, memory::data_type::f32, memory::dims{n*k, k, 1});
        matmul::desc desc(a_md, b_md, c_md);
        matmul::primitive_desc pd(desc, eng);
        it = cache.emplace(key, make_pair(matmul(pd),
            array<memory::desc,3>{a_md, b_md, c_md})).first;
    }
    auto& mds = it->second.second;
    memory a_mem(mds[0], eng, (void*)a->ptr<T>());
    memory b_mem(mds[1], eng, (void*)b->ptr<T>());
    memory c_mem(mds[2], eng, (void*)c->ptr<T>());
    it->second.first.execute(strm, {
        {DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
    strm.wait();
}
#endif
#endif // JIT

} // jittor
