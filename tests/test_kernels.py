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


@pytest.fixture(autouse=True)
def _restore_switch():
    before = perf.fast_kernels_enabled()
    yield
    perf.set_fast_kernels(before)


def _run(fn, inputs, fast):
    """fn(*vars) -> output; returns (output, grads of sum(output * w)) as numpy, for one switch state."""
    perf.set_fast_kernels(fast)
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
    assert attention._cpu_ops() is not None
    perf.set_fast_kernels(False)
    assert attention._cpu_ops() is None


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
