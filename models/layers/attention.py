"""Attention entry point shared by every model.

Callers (ViT blocks, Swin window attention, the ViT/Swin auxiliary heads)
only call :func:`scaled_dot_product_attention`; the kernel behind it can be
swapped (oneDNN batched GEMM on CPU, cuBLAS on GPU, fused kernels) without
touching them.
"""
import jittor as jt


def batched_matmul(a: jt.Var, b: jt.Var) -> jt.Var:
    """(..., M, K) @ (..., K, N) -> (..., M, N) with identical leading dims."""
    return jt.matmul(a, b)


def scaled_dot_product_attention(q: jt.Var, k: jt.Var, v: jt.Var, attn_bias=None, scale=None) -> jt.Var:
    """softmax(q k^T * scale + attn_bias) v.

    q, k, v: (B, H, N, D). attn_bias: additive, broadcastable to (B, H, N, N)
    (Swin's relative-position bias and shift mask). Returns (B, H, N, D).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    attn = batched_matmul(q * scale, k.transpose(0, 1, 3, 2))
    if attn_bias is not None:
        attn = attn + attn_bias
    attn = jt.nn.softmax(attn, dim=-1)
    return batched_matmul(attn, v)
