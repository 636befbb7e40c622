// See dnnl_bmm_op.h for why this op exists.
#include <dnnl.hpp>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <vector>
#include <unordered_map>

#include "var.h"
#include "ops/op_register.h"
#include "dnnl_bmm_op.h"

using namespace std;

namespace jittor {

#ifndef JIT

DnnlBmmOp::DnnlBmmOp(Var* a, Var* b, Var* bias, bool trans_a, bool trans_b, bool bf16)
    : DnnlBmmOp(a, b, trans_a, trans_b, bf16) {
    ASSERT(bias->dtype() == ns_float32) << "dnnl_bmm bias must be float32, got" << bias->dtype();
    this->bias = bias;
}

DnnlBmmOp::DnnlBmmOp(Var* a, Var* b, bool trans_a, bool trans_b, bool bf16)
    : a(a), b(b), bias(nullptr), trans_a(trans_a), trans_b(trans_b), bf16(bf16) {
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
    // The gradient products run in the forward's precision (as under torch.autocast).
    static auto make_bmm = get_op_info("dnnl_bmm")
        .get_constructor<VarPtr, Var*, Var*, bool, bool, bool>();
    static auto make_reduce = get_op_info("reduce")
        .get_constructor<VarPtr, Var*, NanoString, NanoVector, bool>();
    if (v_index == 2)                                    // dbias = dc summed over batch and rows
        return make_reduce(dout, ns_add, NanoVector(0, 1), false);
    if (v_index == 0) {
        if (trans_a)
            return make_bmm(b, dout, trans_b, true, bf16);   // da = op(b) dc^T
        return make_bmm(dout, b, false, !trans_b, bf16);     // da = dc op(b)^T
    }
    if (trans_b)
        return make_bmm(dout, a, true, trans_a, bf16);       // db = dc^T op(a)
    return make_bmm(a, dout, !trans_a, false, bf16);         // db = op(a)^T dc
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
    if (bias) {
        ASSERTop(bias->shape.size(),==,1);
        ASSERTop(bias->shape[0],==,k);
    }
    c->set_shape({a->shape[0], n, k});
}

void DnnlBmmOp::jit_prepare(JK& jk) {
    jk << "«T:" << a->dtype();
    jk << "«Trans_a:" << (trans_a ? 'T' : 'N');
    jk << "«Trans_b:" << (trans_b ? 'T' : 'N');
    jk << "«Bf16:" << (bf16 ? '1' : '0');
    jk << "«Bias:" << (bias ? '1' : '0');
}

#else // JIT
#ifdef JIT_cpu
#pragma clang diagnostic ignored "-Wtautological-compare"
// float32 -> bfloat16, round to nearest even (NaN stays NaN); the operands are contiguous, so
// the copy with the same strides is an elementwise pass (faster than oneDNN's reorder here)
static void to_bf16(const float* __restrict__ src, uint16_t* __restrict__ dst, size_t n) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        std::memcpy(&u, src + i, 4);
        uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        dst[i] = (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)((u >> 16) | 0x40u) : (uint16_t)rounded;
    }
}

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
    struct Prim {
        matmul mm;
        memory::desc a_md, b_md, c_md;
        // bf16 only: the bf16 operand layouts (the f32 strides, so a copy is elementwise)
        memory::desc a16_md, b16_md;
        memory::desc bias_md;  // zero-size when the op has no bias
    };
    static map<array<memory::dim,4>, Prim> cache;
    // bf16 copies of the operands (grown, never shrunk: one op runs at a time)
    static vector<uint16_t> a16_buf, b16_buf;
    array<memory::dim,4> key{batch, n, m, k};
    auto it = cache.find(key);
    if (it == cache.end()) {
        memory::desc a_md({batch, n, m}, memory::data_type::f32, a_strides);
        memory::desc b_md({batch, m, k}, memory::data_type::f32, b_strides);
        memory::desc c_md({batch, n, k}, memory::data_type::f32, memory::dims{n*k, k, 1});
        Prim p;
        p.a_md = a_md; p.b_md = b_md; p.c_md = c_md;
        // the bias broadcasts over batch and rows
        if (@Bias) p.bias_md = memory::desc({1, 1, k}, memory::data_type::f32, memory::dims{k, k, 1});
        if (@Bf16) {
            // same strides, bf16 elements: to_bf16 only converts
            p.a16_md = memory::desc({batch, n, m}, memory::data_type::bf16, a_strides);
            p.b16_md = memory::desc({batch, m, k}, memory::data_type::bf16, b_strides);
        }
        matmul::desc desc(@Bf16 ? p.a16_md : a_md, @Bf16 ? p.b16_md : b_md, p.bias_md, c_md);
        p.mm = matmul(matmul::primitive_desc(desc, eng));
        it = cache.emplace(key, p).first;
    }
    auto& p = it->second;
    unordered_map<int, memory> args{{DNNL_ARG_DST, memory(p.c_md, eng, (void*)c->ptr<T>())}};
    if (@Bias)
        args.emplace(DNNL_ARG_BIAS, memory(p.bias_md, eng, (void*)bias->ptr<T>()));
    if (@Bf16) {
        size_t na = batch * n * m, nb = batch * m * k;
        if (a16_buf.size() < na) a16_buf.resize(na);
        if (b16_buf.size() < nb) b16_buf.resize(nb);
        to_bf16(a->ptr<T>(), a16_buf.data(), na);
        to_bf16(b->ptr<T>(), b16_buf.data(), nb);
        memory a16(p.a16_md, eng, (void*)a16_buf.data());
        memory b16(p.b16_md, eng, (void*)b16_buf.data());
        args.emplace(DNNL_ARG_SRC, a16);
        args.emplace(DNNL_ARG_WEIGHTS, b16);
    } else {
        args.emplace(DNNL_ARG_SRC, memory(p.a_md, eng, (void*)a->ptr<T>()));
        args.emplace(DNNL_ARG_WEIGHTS, memory(p.b_md, eng, (void*)b->ptr<T>()));
    }
    p.mm.execute(strm, args);
    strm.wait();
}
#endif
#endif // JIT

} // jittor
