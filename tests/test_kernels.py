"""Fast kernels (oneDNN batched GEMM, fused CPU softmax) against the plain Jittor reference path.

Every comparison runs the same graph twice, once with ``jhssl.perf`` fast kernels on and once
off, and checks outputs and gradients to 1e-4.
"""
import os
import sys
import warnings


import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jhssl  # noqa: E402,F401
import jittor as jt  # noqa: E402

from jhssl import perf  # noqa: E402
from models.layers import attention, kernels  # noqa: E402

TOL = 1e-4

needs_onednn = pytest.mark.skipif(jt.compile_extern.mkl_ops is None or jt.flags.use_cuda,
                                  reason="Jittor runs without oneDNN on this machine")


def _cpu_has_bf16():
    from jhssl.amp import cpu_has_bf16
    return cpu_has_bf16()


# oneDNN 2.2's bf16 GEMMs need AVX-512 at least; jhssl only turns them on where the CPU has bf16 dot
# products (AVX512_BF16/AMX), so that is where their arithmetic is tested
needs_bf16 = pytest.mark.skipif(not _cpu_has_bf16(), reason="this CPU has no AVX512_BF16/AMX")


@pytest.fixture(autouse=True)
def _restore_switch():
    before = perf.fast_kernels_enabled()
    yield
    perf.set_fast_kernels(before)


def _run(fn, inputs, fast):
    """fn(*vars) -> output; returns (output, grads of sum(output * w)) as numpy, for one switch state."""
    perf.set_fast_kernels(fast)
    # a failed build falls back to the plain ops (with a warning): the fast arm would then compare
    # the plain path with itself
    assert not fast or kernels.cpu_ops() is not None, "the custom CPU ops did not build"
    vs = [jt.array(x) for x in inputs]
    out = fn(*vs)
    w = jt.array(np.random.RandomState(1).randn(*out.shape).astype(np.float32))
    grads = jt.grad((out * w).sum(), vs)
    return out.numpy(), [g.numpy() for g in grads]


def _compare(fn, inputs):
    out_fast, g_fast = _run(fn, inputs, True)
    out_ref, g_ref = _run(fn, inputs, False)
    np.testing.assert_allclose(out_fast, out_ref, rtol=TOL, atol=TOL)
    assert len(g_fast) == len(g_ref)
    for gf, gr in zip(g_fast, g_ref):
        np.testing.assert_allclose(gf, gr, rtol=TOL, atol=TOL)


def _randn(*shape, seed=0, scale=1.0):
    return (np.random.RandomState(seed).randn(*shape) * scale).astype(np.float32)


@needs_onednn
def test_custom_ops_build_and_are_used():
    assert kernels.cpu_ops() is not None
    perf.set_fast_kernels(True)
    assert kernels.enabled_cpu_ops() is not None
    perf.set_fast_kernels(False)
    assert kernels.enabled_cpu_ops() is None


@needs_onednn
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 4), (6, 65, 32, 65)])
def test_dnnl_bmm_transposes_match_reference(shape, trans_a, trans_b):
    batch, n, m, k = shape
    a = _randn(batch, *((m, n) if trans_a else (n, m)), seed=1)
    b = _randn(batch, *((k, m) if trans_b else (m, k)), seed=2)
    _compare(lambda x, y: attention._bmm3(x, y, trans_a, trans_b), [a, b])


@needs_onednn
def test_dnnl_bmm_op_gradient_formulas():
    # The op itself (not the dispatcher): its C++ grad must equal the plain matmul's gradient.
    ops = kernels.cpu_ops()
    a, b = jt.array(_randn(4, 6, 5, seed=3)), jt.array(_randn(4, 6, 7, seed=4))
    c = ops.dnnl_bmm(a, b, True, False)  # a^T b: (4, 5, 7)
    ref = jt.matmul(a.transpose(0, 2, 1), b)
    np.testing.assert_allclose(c.numpy(), ref.numpy(), rtol=TOL, atol=TOL)
    ga, gb = jt.grad(c.sqr().sum(), [a, b])
    ra, rb = jt.grad(ref.sqr().sum(), [a, b])
    np.testing.assert_allclose(ga.numpy(), ra.numpy(), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(gb.numpy(), rb.numpy(), rtol=TOL, atol=TOL)


@needs_onednn
def test_batched_matmul_non_contiguous_inputs():
    a = _randn(2, 3, 7, 5, seed=5)   # used as (2, 3, 5, 7) through a transpose
    b = _randn(3, 2, 7, 4, seed=6)   # used as (2, 3, 7, 4) through a permute
    _compare(lambda x, y: attention.batched_matmul(x.transpose(0, 1, 3, 2), y.permute(1, 0, 2, 3)), [a, b])
    # a strided slice along the batch axis
    c = _randn(4, 6, 5, seed=7)
    d = _randn(2, 5, 3, seed=8)
    _compare(lambda x, y: attention.batched_matmul(x[::2], y), [c, d])


def test_batched_matmul_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="leading dims"):
        attention.batched_matmul(jt.zeros((2, 3, 4)), jt.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="inner dims"):
        attention.batched_matmul(jt.zeros((2, 3, 4)), jt.zeros((2, 5, 5)))


@needs_onednn
@pytest.mark.parametrize("shape,scale", [((4, 9), 1.0), ((2, 3, 65), 30.0), ((5, 1), 1.0)])
def test_fused_softmax_matches_reference(shape, scale):
    _compare(attention.softmax_last, [_randn(*shape, seed=9, scale=scale)])


@needs_onednn
def test_fused_softmax_with_large_negative_mask():
    x = _randn(2, 4, 16, seed=10)
    x[:, :, 10:] = -100.0  # Swin's shift mask value
    _compare(attention.softmax_last, [x])


@needs_onednn
def test_fused_softmax_of_a_fully_masked_row_is_nan_as_the_reference():
    x = _randn(3, 8, seed=14)
    x[1] = -np.inf
    perf.set_fast_kernels(True)
    y = attention.softmax_last(jt.array(x)).numpy()
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()
    np.testing.assert_allclose(y[[0, 2]].sum(-1), 1.0, rtol=1e-6)


def _probs(shape, seed, scale=3.0):
    z = _randn(*shape, seed=seed, scale=scale)
    p = np.exp(z - z.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


@needs_onednn
@pytest.mark.parametrize("shape,scale", [((7, 8192), 10.0), ((2, 5, 33), 1.0), ((1, 1), 1.0), ((3, 4, 65), 60.0)])
def test_soft_cross_entropy_matches_reference(shape, scale):
    from models.layers.cross_entropy import soft_cross_entropy
    p = _probs(shape, seed=15)
    p[0] *= 0.5  # a target that does not sum to 1: sum(p) * logsumexp(s) - p.s, still the reference's value
    _compare(lambda s: soft_cross_entropy(jt.array(p), s), [_randn(*shape, seed=16, scale=scale)])


@needs_onednn
def test_soft_cross_entropy_uses_the_fused_op_and_gives_the_target_no_gradient():
    from models.layers.cross_entropy import soft_cross_entropy
    p, s = jt.array(_probs((4, 50), seed=17)), jt.array(_randn(4, 50, seed=18))
    calls = []
    ops = kernels.cpu_ops()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(ops, name)

    for fast in (True, False):
        perf.set_fast_kernels(fast)
        original = kernels.enabled_cpu_ops
        kernels.enabled_cpu_ops = lambda: Spy() if perf.fast_kernels_enabled() else None
        try:
            loss = soft_cross_entropy(p, s).sum()
        finally:
            kernels.enabled_cpu_ops = original
        gp, gs = jt.grad(loss, [p, s])
        assert np.abs(gp.numpy()).max() == 0 and np.abs(gs.numpy()).max() > 0
    assert calls == ["cpu_soft_cross_entropy"]  # the fast path once, the plain path never
    with pytest.raises(ValueError, match=r"target \(4, 50\) and logits \(4, 49\)"):
        soft_cross_entropy(p, s[:, :49])


@needs_onednn
def test_soft_cross_entropy_of_nan_logits_is_nan():
    from models.layers.cross_entropy import soft_cross_entropy
    s = _randn(2, 16, seed=19)
    s[0, 3] = np.nan
    perf.set_fast_kernels(True)
    out = soft_cross_entropy(jt.array(_probs((2, 16), seed=20)), jt.array(s)).numpy()
    assert np.isnan(out[0]) and np.isfinite(out[1])


@needs_onednn
@pytest.mark.parametrize("B,H,N,M,D", [(2, 3, 17, 17, 8), (1, 2, 5, 9, 4), (3, 1, 65, 65, 16)])
def test_sdpa_matches_reference(B, H, N, M, D):
    q, k, v = _randn(B, H, N, D, seed=11), _randn(B, H, M, D, seed=12), _randn(B, H, M, D, seed=13)
    _compare(attention.scaled_dot_product_attention, [q, k, v])


@needs_onednn
def test_sdpa_from_permuted_qkv_with_bias_and_scale():
    # As a ViT/Swin block calls it: q, k, v are non-contiguous views of one qkv tensor,
    # with a per-head bias (relative position) plus a per-window mask broadcast over heads.
    B, N, H, D = 4, 16, 2, 8
    qkv = _randn(B, N, 3, H, D, seed=14)
    head_bias = _randn(1, H, N, N, seed=15)
    mask = np.where(np.random.RandomState(16).rand(B, 1, N, N) < 0.3, -100.0, 0.0).astype(np.float32)

    def fn(t, hb):
        q, k, v = t.permute(2, 0, 3, 1, 4)
        return attention.scaled_dot_product_attention(q, k, v, attn_bias=hb + jt.array(mask), scale=0.3)

    _compare(fn, [qkv, head_bias])


def test_sdpa_rejects_bad_shapes():
    with pytest.raises(ValueError, match="B, H, N, D"):
        attention.scaled_dot_product_attention(jt.zeros((2, 3, 4)), jt.zeros((2, 3, 4)), jt.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="do not match"):
        attention.scaled_dot_product_attention(jt.zeros((2, 3, 4, 8)), jt.zeros((2, 3, 4, 4)),
                                               jt.zeros((2, 3, 4, 8)))


def test_switch_off_never_touches_custom_ops(monkeypatch):
    def boom():
        raise AssertionError("custom ops used while fast kernels are off")

    monkeypatch.setattr(kernels, "cpu_ops", boom)
    perf.set_fast_kernels(False)
    q = jt.array(_randn(1, 2, 5, 4, seed=17))
    out = attention.scaled_dot_product_attention(q, q, q)
    ref = jt.nn.softmax(jt.matmul(q, q.transpose(0, 1, 3, 2)) * 0.5, dim=-1) @ q
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("env,switch", [("JHSSL_FAST_KERNELS", "fast_kernels"),
                                        ("JHSSL_MASKED_PROJECTION", "masked_projection")])
def test_switch_from_environment(monkeypatch, env, switch):
    enabled, setter, scoped = (getattr(perf, f"{switch}_enabled"), getattr(perf, f"set_{switch}"),
                               getattr(perf, switch))
    state = perf._FAST_KERNELS if switch == "fast_kernels" else perf._MASKED_PROJECTION
    monkeypatch.setattr(state, "value", None)
    monkeypatch.setenv(env, "0")
    assert enabled() is False
    monkeypatch.setattr(state, "value", None)
    monkeypatch.setenv(env, "1")
    assert enabled() is True
    with scoped(False):
        assert enabled() is False
    assert enabled() is True
    with pytest.raises(TypeError):
        setter("no")


def test_build_failure_falls_back_with_one_warning(monkeypatch):
    def broken_build():
        raise RuntimeError("simulated: oneDNN missing")

    monkeypatch.setattr(kernels, "_build", broken_build)
    monkeypatch.setattr(kernels, "_ops", None)
    monkeypatch.setattr(kernels, "_failed", False)
    perf.set_fast_kernels(True)
    q = jt.array(_randn(2, 2, 6, 4, seed=18))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1 = attention.scaled_dot_product_attention(q, q, q).numpy()
        out2 = attention.scaled_dot_product_attention(q, q, q).numpy()
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "simulated: oneDNN missing" in msgs[0]
    perf.set_fast_kernels(False)
    ref = attention.scaled_dot_product_attention(q, q, q).numpy()
    np.testing.assert_allclose(out1, ref, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(out2, ref, rtol=TOL, atol=TOL)


@needs_onednn
@pytest.mark.parametrize("shape,eps", [((4, 7, 32), 1e-6), ((3, 5), 1e-5), ((2, 2, 3, 8), 1e-6)])
def test_fused_layer_norm_matches_reference(shape, eps):
    from models.layers.fast_norm import layer_norm
    c = shape[-1]
    x = _randn(*shape, seed=19, scale=3.0) + 1.5  # a mean far from 0 stresses the variance formula
    w, b = _randn(c, seed=20), _randn(c, seed=21)
    _compare(lambda xx, ww, bb: layer_norm(xx, ww, bb, eps), [x, w, b])


@needs_onednn
def test_fused_layer_norm_module_matches_jittor_layernorm():
    from models.layers.fast_norm import LayerNorm
    ln, ref = LayerNorm(16, eps=1e-6), jt.nn.LayerNorm(16, eps=1e-6)
    assert sorted(ln.state_dict()) == sorted(ref.state_dict()) == ["bias", "weight"]
    w, b = _randn(16, seed=22), _randn(16, seed=23)
    for m in (ln, ref):
        m.weight.assign(jt.array(w))
        m.bias.assign(jt.array(b))
    perf.set_fast_kernels(True)
    x = jt.array(_randn(2, 9, 16, seed=24))
    np.testing.assert_allclose(ln(x).numpy(), ref(x).numpy(), rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match="last axis"):
        ln(jt.zeros((2, 8)))


def test_fused_adamw_matches_reference_over_steps():
    """jhssl.optim.AdamW's fused CPU update (fast kernels on) against its plain Jittor formula."""
    from jhssl.optim import AdamW
    states = {}
    for fast in (True, False):
        perf.set_fast_kernels(fast)
        params = [jt.array(_randn(7, 5, seed=30)), jt.array(_randn(13, seed=31))]
        opt = AdamW([{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}],
                    lr=1e-2)
        for k in range(3):
            for g in opt.param_groups:
                g["lr"] = 1e-2 * (k + 1)  # a new learning rate each step (no recompilation needed)
            loss = (params[0] * jt.array(_randn(7, 5, seed=40 + k))).sum() + (params[1] ** 3).sum()
            opt.step(loss)
        states[fast] = [p.numpy() for p in params] + [x.numpy() for pg in opt.param_groups
                                                      for key in ("m", "values") for x in pg[key]]
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(states[True][:2], [_randn(7, 5, seed=30), _randn(13, seed=31)]))
    for a, b in zip(states[True], states[False]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- GELU
@needs_onednn
@pytest.mark.parametrize("shape,scale", [((7,), 1.0), ((3, 5000), 3.0), ((2, 17, 64), 8.0)])
def test_fused_gelu_matches_reference(shape, scale):
    from models.layers.activation import gelu
    x = _randn(*shape, seed=21, scale=scale)
    x.flat[:5] = [0.0, -12.0, 12.0, -3.5, 1e-6][:x.size][:5]  # the tails and zero
    _compare(gelu, [x])


@needs_onednn
@pytest.mark.parametrize("shape", [(3, 5, 13), (2, 33, 768), (1, 8)])
def test_fused_gelu_with_the_linear_bias_matches_reference(shape):
    # GELU(x + b) in one op; its backward gives dx and db (column sums made per thread): rows of 13
    # (scalar tails), 768 (the ViT-T MLP) and a single row
    from models.layers.activation import gelu
    _compare(gelu, [_randn(*shape, seed=24, scale=2.0), _randn(shape[-1], seed=25)])
    # the bias's gradient alone (x needs none): one backward op, the x output unused
    x, b = jt.array(_randn(*shape, seed=26)).stop_grad(), jt.array(_randn(shape[-1], seed=27))
    grads = []
    for fast in (True, False):
        perf.set_fast_kernels(fast)
        grads.append(jt.grad(gelu(x, b).sqr().sum(), b).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=TOL, atol=TOL)


@needs_onednn
def test_linear_bias_goes_to_the_fused_kernel_only_where_it_runs(monkeypatch):
    from jittor import nn
    from models.layers.linear import deferred_bias
    layer = nn.Linear(6, 5)
    x = jt.array(_randn(4, 6, seed=28))
    perf.set_fast_kernels(True)
    product, bias = deferred_bias(layer, x)
    assert bias is layer.bias
    np.testing.assert_allclose((product + bias).numpy(), layer(x).numpy(), rtol=TOL, atol=TOL)
    for off in (perf.fused_bias(False), perf.bf16_products(True), perf.fast_kernels(False)):
        with off:
            assert deferred_bias(layer, x)[1] is None
    assert deferred_bias(nn.Linear(6, 5, bias=False), x)[1] is None
    # a ViT block hands qkv's bias to the attention op and fc1's to the GELU op (bias-taking forms)
    import models
    import models.vit  # noqa: F401
    real, calls = kernels.cpu_ops(), []

    class Spy:
        def __getattr__(self, name):
            op = getattr(real, name)
            return (lambda *a: (calls.append((name, len(a))), op(*a))[1]) if name in ("cpu_gelu", "cpu_attention") else op
    monkeypatch.setattr(kernels, "cpu_ops", lambda: Spy())
    models.create_model("vit_tiny", patch_size=7, img_size=28, depth=1).forward_features(
        jt.array(_randn(1, 3, 28, 28, seed=29)))["cls"].sync()
    assert sorted(set(calls)) == [("cpu_attention", 4), ("cpu_gelu", 2)]


@needs_onednn
def test_fused_gelu_is_used_by_the_models_and_switch_off_restores_jittor(monkeypatch):
    from models.layers import activation
    from models.layers.mlp import Mlp
    called = []
    real = kernels.cpu_ops()
    monkeypatch.setattr(kernels, "cpu_ops", lambda: (called.append(1), real)[1])
    perf.set_fast_kernels(True)
    Mlp(8, 16)(jt.array(_randn(2, 8, seed=22))).sync()
    assert called, "the transformer MLP did not reach the fused GELU"
    called.clear()
    perf.set_fast_kernels(False)
    x = jt.array(_randn(4, 9, seed=23))
    np.testing.assert_allclose(activation.GELU()(x).numpy(), jt.nn.gelu(x).numpy(), rtol=0, atol=0)
    assert not called


# ----------------------------------------------------------------------------- depthwise conv (NHWC)
def _dwconv_fn(channels, k, bias=True):
    from jittor import nn
    from models.layers.dwconv import depthwise_conv_nhwc
    conv = nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=bias)

    def fn(x, w, *b):
        conv.weight = w
        if b:
            conv.bias = b[0]
        return depthwise_conv_nhwc(x, conv)
    return fn


@needs_onednn
@pytest.mark.parametrize("shape,k", [((3, 4, 4, 24), 7), ((2, 2, 2, 16), 7), ((2, 9, 7, 5), 3), ((1, 1, 1, 3), 7)])
def test_depthwise_conv_nhwc_matches_nn_conv(shape, k):
    c = shape[-1]
    _compare(_dwconv_fn(c, k), [_randn(*shape, seed=24), _randn(c, 1, k, k, seed=25, scale=0.2), _randn(c, seed=26)])


@needs_onednn
def test_depthwise_conv_nhwc_uses_the_kernel_only_where_it_applies(monkeypatch):
    from jittor import nn
    from models.layers import dwconv
    real = kernels.cpu_ops()
    used = []
    monkeypatch.setattr(kernels, "cpu_ops", lambda: (used.append(1), real)[1])
    perf.set_fast_kernels(True)
    x = jt.array(_randn(2, 5, 5, 6, seed=27))
    for conv in (nn.Conv2d(6, 6, 3, padding=1, groups=3),           # grouped, not depthwise
                 nn.Conv2d(6, 6, 3, padding=0, groups=6),           # not "same" padding
                 nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
                 nn.Conv2d(6, 6, 4, padding=2, groups=6)):          # even kernel
        ref = conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        np.testing.assert_allclose(dwconv.depthwise_conv_nhwc(x, conv).numpy(), ref.numpy(), rtol=TOL, atol=TOL)
    assert not used
    dwconv.depthwise_conv_nhwc(x, nn.Conv2d(6, 6, 3, padding=1, groups=6)).sync()
    assert used


# ----------------------------------------------------------------------------- bf16 products
def _bf16(a):
    """float32 -> bfloat16 -> float32 with round-to-nearest-even (what the op does to its operands)."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


@needs_onednn
@needs_bf16
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_dnnl_bmm_bf16_rounds_operands_and_accumulates_in_fp32(trans_a, trans_b):
    ops = kernels.cpu_ops()
    batch, n, m, k = 3, 33, 70, 19
    a = _randn(batch, *((m, n) if trans_a else (n, m)), seed=31)
    b = _randn(batch, *((k, m) if trans_b else (m, k)), seed=32)
    got = ops.dnnl_bmm(jt.array(a), jt.array(b), trans_a, trans_b, True).numpy()
    la = np.swapaxes(a, 1, 2) if trans_a else a
    lb = np.swapaxes(b, 1, 2) if trans_b else b
    emulated = np.matmul(_bf16(la).astype(np.float64), _bf16(lb).astype(np.float64))
    exact = np.matmul(la.astype(np.float64), lb.astype(np.float64))
    np.testing.assert_allclose(got, emulated, rtol=1e-5, atol=1e-5)
    assert np.abs(got - exact).max() > 1e-3  # the operands really were rounded (bf16 keeps 8 bits)


@needs_onednn
@needs_bf16
def test_bf16_linear_with_bias_forward_and_gradients():
    from models.layers.linear import linear
    rng = np.random.default_rng(33)
    x, w = rng.standard_normal((2, 9, 40)).astype(np.float32), rng.standard_normal((24, 40)).astype(np.float32)
    b, g = rng.standard_normal(24).astype(np.float32), rng.standard_normal((2, 9, 24)).astype(np.float32)
    xv, wv, bv = jt.array(x), jt.array(w), jt.array(b)
    perf.set_fast_kernels(True)
    with perf.bf16_products(True):
        y = linear(xv, wv, bv)
        gx, gw, gb = jt.grad((y * jt.array(g)).sum(), [xv, wv, bv])
    assert all(str(v.dtype) == "float32" for v in (y, gx, gw, gb))
    f64 = np.float64
    x2, g2 = x.reshape(-1, 40), g.reshape(-1, 24)
    np.testing.assert_allclose(y.numpy().reshape(-1, 24), _bf16(x2).astype(f64) @ _bf16(w).astype(f64).T + b,
                               rtol=1e-5, atol=1e-5)
    # the gradient products run in bf16 too (as under torch.autocast); the bias gradient is an fp32 sum
    np.testing.assert_allclose(gx.numpy().reshape(-1, 40), _bf16(g2).astype(f64) @ _bf16(w).astype(f64),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw.numpy(), _bf16(g2).astype(f64).T @ _bf16(x2).astype(f64), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gb.numpy(), g2.sum(0), rtol=1e-5, atol=1e-5)
    # off (the default): Jittor's fp32 product, bit for bit
    y32 = linear(xv, wv, bv)
    np.testing.assert_array_equal(y32.numpy(), (jt.nn.matmul_transpose(xv, wv) + bv).numpy())


@needs_onednn
def test_bf16_products_need_the_fast_kernels():
    perf.set_fast_kernels(False)
    with perf.bf16_products(True):
        from models import perf as model_perf
        assert model_perf.bf16_products_enabled() is False
    perf.set_fast_kernels(True)
    with perf.bf16_products(True):
        assert model_perf.bf16_products_enabled() is True
    assert model_perf.bf16_products_enabled() is False  # off outside the block


# ----------------------------------------------------------------------------- packed q/k/v
@pytest.mark.parametrize("parts,heads,shape", [(3, 3, (4, 17, 36)), (2, 2, (2, 5, 16)), (3, 1, (1, 1, 6))])
def test_split_heads_matches_indexing_the_permuted_projection(parts, heads, shape):
    def fn(packed):
        outs = attention.split_heads(packed, parts, heads)
        assert len(outs) == parts and all(o.shape == [shape[0], heads, shape[1], shape[2] // parts // heads]
                                          for o in outs)
        # every part reaches the output with its own weight, so each part's gradient is checked
        return jt.concat([o * (i + 1) for i, o in enumerate(outs)], dim=-1)
    _compare(fn, [_randn(*shape, seed=41)])


def test_split_heads_gradient_when_a_part_is_unused():
    x = jt.array(_randn(2, 5, 24, seed=42))
    perf.set_fast_kernels(True)
    q, k, _ = attention.split_heads(x, 3, 2)
    g = jt.grad((q * k).sum(), x).numpy()
    perf.set_fast_kernels(False)
    q, k, _ = attention.split_heads(x, 3, 2)
    np.testing.assert_allclose(g, jt.grad((q * k).sum(), x).numpy(), rtol=TOL, atol=TOL)
    assert np.all(g[..., 16:] == 0)  # the unused v part gets a zero gradient
    with pytest.raises(ValueError, match="split_heads"):
        attention.split_heads(x, 5, 2)


# ----------------------------------------------------------------------------- fused self-attention
@needs_onednn
@pytest.mark.parametrize("B,N,H,D", [(3, 17, 3, 16), (2, 5, 2, 8), (2, 1, 2, 8), (1, 32, 4, 4),
                                     (2, 71, 2, 24), (1, 9, 3, 12)])
def test_fused_self_attention_matches_split_heads_and_sdpa(B, N, H, D):
    # the fused op (fast kernels on, N <= FUSED_MAX_TOKENS) against Jittor's plain ops; the packed
    # projection is scaled up so the softmax rows are far from uniform. The shapes reach every part of
    # the kernel's products: 6/4/2/1-row blocks (N = 71 = 11 x 6 + 4 + 1), 16- and 8-column panels and
    # the scalar columns past them (D = 24, 12, 4), padded score rows (N not a multiple of 8)
    assert N <= attention.FUSED_MAX_TOKENS
    _compare(lambda qkv: attention.self_attention(qkv, H, scale=0.3), [_randn(B, N, 3 * H * D, seed=43, scale=2.0)])


@needs_onednn
@pytest.mark.parametrize("B,N,H,D", [(2, 71, 2, 24), (3, 17, 3, 16)])
def test_fused_self_attention_adds_the_projection_bias(B, N, H, D):
    # qkv's bias added as q, k, v are copied (fused) vs added to the projection first (plain); the
    # bias gradient is summed per (image, head) inside the backward op
    _compare(lambda qkv, b: attention.self_attention(qkv, H, scale=0.3, qkv_bias=b),
             [_randn(B, N, 3 * H * D, seed=49, scale=2.0), _randn(3 * H * D, seed=50, scale=2.0)])


@needs_onednn
def test_fused_self_attention_is_used_only_where_it_applies(monkeypatch):
    real = kernels.cpu_ops()
    used = []

    class Spy:
        def __getattr__(self, name):
            if name == "cpu_attention":
                used.append(1)
            return getattr(real, name)
    monkeypatch.setattr(kernels, "cpu_ops", lambda: Spy())
    perf.set_fast_kernels(True)
    n_long = attention.FUSED_MAX_TOKENS + 1
    attention.self_attention(jt.array(_randn(2, n_long, 24, seed=44)), 2).sync()      # too long
    bias = jt.array(_randn(1, 2, 5, 5, seed=45))
    attention.self_attention(jt.array(_randn(2, 5, 24, seed=46)), 2, attn_bias=bias).sync()  # a bias
    assert not used
    attention.self_attention(jt.array(_randn(2, 5, 24, seed=47)), 2).sync()
    assert used
    # under bf16 products the fp32 op keeps its own, lower limit (graphs built, not run: this CPU may
    # have no bf16)
    used.clear()
    limit = attention.FUSED_MAX_TOKENS_BF16
    assert limit < attention.FUSED_MAX_TOKENS
    with perf.bf16_products(True):
        attention.self_attention(jt.array(_randn(2, limit + 1, 24, seed=48)), 2)
        assert not used
        attention.self_attention(jt.array(_randn(2, limit, 24, seed=48)), 2)
        assert used
    # the path it leaves to split_heads + sdpa computes the same attention (with the bias here)
    x = jt.array(_randn(2, 5, 24, seed=46))
    q, k, v = attention.split_heads(x, 3, 2)
    ref = jt.nn.softmax(jt.matmul(q, k.permute(0, 1, 3, 2)) * 4 ** -0.5 + bias, dim=-1)
    ref = jt.matmul(ref, v).permute(0, 2, 1, 3).reshape(2, 5, 8)
    np.testing.assert_allclose(attention.self_attention(x, 2, attn_bias=bias).numpy(), ref.numpy(),
                               rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match="self_attention"):
        attention.self_attention(x, 3)


@needs_onednn
def test_vit_block_output_and_gradients_same_with_the_fused_attention():
    # a ViT-T/7 on 28 px (the demo's 17 tokens): the whole model, fused attention vs plain ops
    import models
    import models.vit  # noqa: F401
    jt.set_global_seed(0)
    model = models.create_model("vit_tiny", patch_size=7, img_size=28, depth=2)
    params = model.parameters()

    def fn(x):
        return model.forward_features(x)["patch"]
    x = _randn(2, 3, 28, 28, seed=48)
    outs = []
    for fast in (True, False):
        perf.set_fast_kernels(fast)
        out = fn(jt.array(x))
        grads = jt.grad((out * out).sum(), params)
        outs.append((out.numpy(), [g.numpy() for g in grads]))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=TOL, atol=TOL)
    for gf, gr in zip(outs[0][1], outs[1][1]):
        np.testing.assert_allclose(gf, gr, rtol=TOL, atol=TOL)
