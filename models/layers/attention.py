"""Attention entry point shared by every model.

Callers (ViT blocks, Swin window attention, the ViT/Swin auxiliary heads)
only call :func:`scaled_dot_product_attention`; the kernel behind it can be
swapped without touching them:

* CPU, fast kernels on (default): the batched products go to oneDNN's
  matmul primitive as one (B*H, N, D) batch (``kernels/dnnl_bmm_op.cc``),
  with k^T and the transposed gradient operands expressed as strides, and
  the softmax is one fused pass per row (``kernels/cpu_softmax_op.cc``).
  Under ``models.perf.bf16_products`` the products take bf16 operands
  inside the op (fp32 accumulation and output).
  Jittor itself lowers 3-D/4-D matmuls on the CPU to a generic
  broadcast-multiply-reduce kernel, which was ~45% of a ViT training step.
* CPU, fast kernels on, up to ``FUSED_MAX_TOKENS`` tokens, no ``attn_bias``
  (:func:`self_attention`): one op reads q, k, v straight from the packed qkv
  projection (adding its bias, when the caller deferred it) and writes the
  heads' outputs side by side (``kernels/cpu_attention_op.cc``); its gradient
  recomputes the probabilities and sums the bias gradient. Always fp32, also
  under ``bf16_products``.
* CUDA, fast kernels on: cuBLAS' strided batched GEMM (Jittor's own
  ``cublas_batched_matmul`` op, with the same transpose flags) and Jittor's
  fused CUDA softmax.
* Fast kernels off (``JHSSL_FAST_KERNELS=0`` or
  ``models.perf.set_fast_kernels(False)``), non-float32 inputs, or the custom
  op failed to build: plain Jittor ops, the reference path.
"""
import contextlib

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt

from models import perf

from . import kernels  # importing compiles nothing: the ops are built at their first use


def _cublas_ops():
    if not (jt.flags.use_cuda and perf.fast_kernels_enabled()):
        return None
    return getattr(jt.compile_extern, "cublas_ops", None)


def _swap_last(x: jt.Var) -> jt.Var:
    order = list(range(x.ndim))
    order[-1], order[-2] = order[-2], order[-1]
    return x.transpose(order)


def _bmm3(a: jt.Var, b: jt.Var, trans_a: bool = False, trans_b: bool = False) -> jt.Var:
    """op(a) @ op(b) for 3-D a, b with the same batch size; op = transpose when asked."""
    if a.dtype != b.dtype:  # mixed precision: fp32 scores (+ an fp32 bias) meet a bf16/fp16 operand
        a, b = a.float32(), b.float32()
    if a.dtype == jt.float32 and b.dtype == jt.float32 and min(a.shape) > 0 and min(b.shape) > 0:
        ops = kernels.enabled_cpu_ops()
        if ops is not None:
            return ops.dnnl_bmm(a, b, trans_a, trans_b, perf.bf16_products_enabled())
        cublas = _cublas_ops()
        if cublas is not None:
            return cublas.cublas_batched_matmul(a, b, trans_a, trans_b)
    return jt.matmul(_swap_last(a) if trans_a else a, _swap_last(b) if trans_b else b)


def batched_matmul(a: jt.Var, b: jt.Var) -> jt.Var:
    """(..., M, K) @ (..., K, N) -> (..., M, N) with identical leading dims (at least one)."""
    if a.ndim < 3 or a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"batched_matmul needs equal leading dims, got {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"batched_matmul: inner dims differ, {a.shape} @ {b.shape}")
    lead = list(a.shape[:-2])
    m, k = a.shape[-2:]
    n = b.shape[-1]
    c = _bmm3(a.reshape(-1, m, k), b.reshape(-1, k, n))
    return c.reshape(lead + [m, n])


def softmax_last(x: jt.Var) -> jt.Var:
    """Softmax over the last axis (fused single-pass kernel on the CPU when enabled).

    bf16/fp16 input (mixed precision, jhssl.amp): computed in fp32, returned in the input's dtype."""
    if str(x.dtype) in ("bfloat16", "float16"):
        return softmax_last(x.float32()).cast(x.dtype)
    if x.dtype == jt.float32 and x.numel() > 0:
        ops = kernels.enabled_cpu_ops()
        if ops is not None:
            return ops.cpu_softmax(x)
    return jt.nn.softmax(x, dim=-1)


def _head_views(packed: jt.Var, parts: int, heads: int):
    """(B, N, parts * heads * D) -> ``parts`` views (B, heads, N, D) of its permutation."""
    b, n, c = packed.shape
    t = packed.reshape(b, n, parts, heads, c // parts // heads).permute(2, 0, 3, 1, 4)
    return tuple(t[i] for i in range(parts))


class _SplitHeads(jt.Function):
    """(B, N, P * H * D) -> P tensors (B, H, N, D), and back as one gradient.

    Indexing the permuted (P, B, H, N, D) tensor three times works, but each index's gradient is a
    zero-filled full-size tensor with its part written in, and the three are then added: ~3x the
    traffic of the one stack + permute this gradient does."""

    def execute(self, packed, parts, heads):
        self.shape = (*packed.shape, parts, heads)
        return _head_views(packed, parts, heads)

    def grad(self, *grads):
        b, n, c, parts, heads = self.shape
        d = c // parts // heads
        full = [g if g is not None else jt.zeros((b, heads, n, d)) for g in grads]
        return jt.stack(full, 0).permute(1, 3, 0, 2, 4).reshape(b, n, c), None, None


def split_heads(packed: jt.Var, parts: int, heads: int):
    """A packed projection (B, N, parts * heads * D), e.g. ``qkv(x)``, as ``parts`` tensors (B, heads, N, D).

    Same values as ``packed.reshape(B, N, parts, heads, D).permute(2, 0, 3, 1, 4)`` indexed per part;
    with fast kernels on the gradient is assembled in one pass (:class:`_SplitHeads`)."""
    if packed.ndim != 3 or packed.shape[2] % (parts * heads):
        raise ValueError(f"split_heads: {tuple(packed.shape)} is not (B, N, {parts} x {heads} x D)")
    if perf.fast_kernels_enabled():
        return _SplitHeads.apply(packed, parts, heads)
    return _head_views(packed, parts, heads)


def scaled_dot_product_attention(q: jt.Var, k: jt.Var, v: jt.Var, attn_bias=None, scale=None) -> jt.Var:
    """softmax(q k^T * scale + attn_bias) v.

    q, k, v: (B, H, N, D) (k, v may have another length M than q).
    attn_bias: additive, broadcastable to (B, H, N, M) (Swin's relative-position
    bias and shift mask). Returns (B, H, N, D).
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, H, N, D) tensors, got {q.shape}, {k.shape}, {v.shape}")
    bsz, heads, n, d = q.shape
    m = k.shape[2]
    if k.shape != [bsz, heads, m, d] or v.shape[:3] != [bsz, heads, m]:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not match")
    dv = v.shape[3]
    if scale is None:
        scale = d ** -0.5
    # Scaling q (N x D) is cheaper than scaling the N x M scores, and it fuses
    # into the copy that makes q contiguous anyway.
    attn = _bmm3((q * scale).reshape(bsz * heads, n, d), k.reshape(bsz * heads, m, d), trans_b=True)
    if attn_bias is not None:
        attn = (attn.reshape(bsz, heads, n, m) + attn_bias).reshape(bsz * heads, n, m)
    attn = softmax_last(attn)
    out = _bmm3(attn, v.reshape(bsz * heads, m, dv))
    return out.reshape(bsz, heads, n, dv)


# Longest sequence the fused CPU attention takes. Its products run on a register-blocked kernel per
# (image, head) with the operands in cache; oneDNN's batched GEMMs pay a per-call cost per few-token
# product, and the split path permutes q, k, v and the output through memory. Forward + backward of
# one layer, 16 images x 6 heads x D 64, split time over fused (benchmarks/attention_tokens.py,
# results/fused_attention-amd-epyc-f25m1-2c.md, Zen 3, 2 cores): 2.6x at 17 tokens, 1.5x at 65 and
# 197, 1.2x at 401, 1.07x at 577 (0.99 ± 0.24 in a first sweep): the gain fades as each thread's
# N x N buffers (1.3 MB at 577) outgrow the 512 KB L2, so the limit stays inside the measured range.
FUSED_MAX_TOKENS = 512
# Under bf16 products (models.perf.bf16_products: a CPU with AVX512_BF16/AMX) the split path's products
# take bf16 operands while the fused op stays fp32. That crossover has not been measured with this
# kernel (no bf16 host since), so bf16 runs keep the limit the earlier fp32 kernel had.
FUSED_MAX_TOKENS_BF16 = 32


@contextlib.contextmanager
def fused_limit(tokens: int):
    """Within: sequences of up to ``tokens`` take the fused op (0: none), in fp32 and under bf16 products
    alike; both limits are restored after. For the benchmarks' fused vs split comparisons."""
    global FUSED_MAX_TOKENS, FUSED_MAX_TOKENS_BF16
    saved = FUSED_MAX_TOKENS, FUSED_MAX_TOKENS_BF16
    FUSED_MAX_TOKENS = FUSED_MAX_TOKENS_BF16 = int(tokens)
    try:
        yield
    finally:
        FUSED_MAX_TOKENS, FUSED_MAX_TOKENS_BF16 = saved


def self_attention(qkv: jt.Var, heads: int, scale=None, attn_bias=None, qkv_bias=None) -> jt.Var:
    """Multi-head self-attention from a packed projection: ``qkv`` (B, N, 3 * C) -> (B, N, C).

    The heads' outputs side by side, as ``proj`` expects them (``softmax(q k^T * scale +
    attn_bias) v`` per head, :func:`split_heads` order). ``qkv_bias`` (3 * C,): the projection's
    bias when it is not yet added (:func:`models.layers.linear.deferred_bias`). Sequences of up to
    ``FUSED_MAX_TOKENS`` without an ``attn_bias``, on the CPU with fast kernels on, take the fused op
    (which adds ``qkv_bias`` as it reads q, k, v); everything else splits the heads and calls
    :func:`scaled_dot_product_attention`."""
    if qkv.ndim != 3 or qkv.shape[2] % (3 * heads):
        raise ValueError(f"self_attention: {tuple(qkv.shape)} is not (B, N, 3 x {heads} x D)")
    b, n, c3 = qkv.shape
    c = c3 // 3
    if scale is None:
        scale = (c // heads) ** -0.5
    limit = FUSED_MAX_TOKENS_BF16 if perf.bf16_products_enabled() else FUSED_MAX_TOKENS
    ops = (kernels.enabled_cpu_ops() if attn_bias is None and qkv.dtype == jt.float32
           and (qkv_bias is None or qkv_bias.dtype == jt.float32) and 0 < n <= limit and b > 0 else None)
    if ops is not None:
        if qkv_bias is None:
            return ops.cpu_attention(qkv, int(heads), float(scale))
        return ops.cpu_attention(qkv, qkv_bias, int(heads), float(scale))
    if qkv_bias is not None:
        qkv = qkv + qkv_bias
    q, k, v = split_heads(qkv, 3, heads)
    out = scaled_dot_product_attention(q, k, v, attn_bias=attn_bias, scale=scale)
    return out.permute(0, 2, 1, 3).reshape(b, n, c)
