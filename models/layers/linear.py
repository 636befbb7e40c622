"""``x @ W^T + b`` with the product in bf16 on the CPU (the CPU side of mixed precision), and the
bias handed to the fused kernel that reads the product (:func:`deferred_bias`).

Under :func:`models.perf.bf16_products` (set by ``jhssl.amp`` when ``amp: true`` runs on a CPU
with native bf16 instructions) a linear layer's GEMM and its two gradient GEMMs take bf16
operands inside oneDNN (``kernels/dnnl_bmm_op.cc``, ``bf16=true``) and accumulate in fp32.
The Vars around it stay float32, so the elementwise work (GELU, LayerNorm, residuals) is exactly
the fp32 path's; only the products' inputs are rounded, as torch.autocast rounds them.
"""
from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from models import perf

from . import kernels


def linear(x: jt.Var, weight: jt.Var, bias=None) -> jt.Var:
    """``x (..., in) @ weight (out, in)^T + bias``; bf16 products when enabled, else Jittor's own."""
    ops = (kernels.enabled_cpu_ops() if perf.bf16_products_enabled() and x.dtype == jt.float32
           and weight.dtype == jt.float32 and x.numel() > 0 else None)
    if ops is None:
        y = nn.matmul_transpose(x, weight)
        return y if bias is None else y + bias
    rows = x.reshape((1, -1, x.shape[-1]))
    w = weight.reshape((1,) + tuple(weight.shape))
    # the bias is added inside the GEMM: no separate pass over the output
    y = (ops.dnnl_bmm(rows, w, False, True, True) if bias is None
         else ops.dnnl_bmm(rows, w, bias, False, True, True))
    return y.reshape(tuple(x.shape[:-1]) + (weight.shape[0],))


def deferred_bias(layer: nn.Linear, x: jt.Var):
    """``layer(x)`` as ``(x W^T, b)`` for a caller whose fused CPU kernel adds ``b`` itself (GELU,
    self-attention: :func:`models.perf.fused_bias`), else ``(layer(x), None)``.

    Jittor cannot fuse a bias add into the custom op that reads its result, so it is a pass of its
    own over the (rows, out) output, and its gradient another (a column sum): ~5 % of a ViT-T/4
    training step on the CPU for fc1 and qkv. Not deferred under bf16 products (the bias is already
    inside oneDNN's GEMM there), on the GPU, or without the fast kernels.
    """
    if (layer.bias is None or x.dtype != jt.float32 or layer.weight.dtype != jt.float32
            or not perf.fused_bias_enabled() or perf.bf16_products_enabled() or kernels.enabled_cpu_ops() is None):
        return layer(x), None
    return nn.matmul_transpose(x, layer.weight), layer.bias
