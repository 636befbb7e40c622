"""``x @ W^T + b`` with the product in bf16 on the CPU (the CPU side of mixed precision).

Under :func:`models.perf.bf16_products` (set by ``jhssl.amp`` when ``amp: true`` runs on a CPU
with native bf16 instructions) a linear layer's GEMM and its two gradient GEMMs take bf16
operands inside oneDNN (``kernels/dnnl_bmm_op.cc``, ``bf16=true``) and accumulate in fp32.
The Vars around it stay float32, so the elementwise work (GELU, LayerNorm, residuals) is exactly
the fp32 path's; only the products' inputs are rounded, as torch.autocast rounds them.

When the layer is trained, its input and its output gradient are rounded once each
(``cpu_to_bf16``) and shared by the two products that use them (forward and weight gradient;
input and weight gradients), instead of once per product inside ``dnnl_bmm``: the same bf16
operands, so the same results bit for bit, with fewer passes, and the backward keeps the 2-byte
copy of the input rather than the float32 one.
"""
from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from models import perf

from . import kernels


def bf16_rows_product(ops, rows, weight, bias=None):
    """``rows (1, M, K) @ weight (N, K)^T [+ bias]`` with bf16 operands in one oneDNN GEMM (the bias
    added inside it: no separate pass over the output). Float32 operands are rounded inside the op,
    and its own gradient rounds them again for each gradient product."""
    w = weight.reshape((1,) + tuple(weight.shape))
    return (ops.dnnl_bmm(rows, w, False, True, True) if bias is None
            else ops.dnnl_bmm(rows, w, bias, False, True, True))


class _Bf16Linear(jt.Function):
    """``rows (1, M, K) @ weight (N, K)^T [+ bias]`` with bf16 operands rounded once each."""

    def __init__(self, ops):
        self.ops = ops

    def execute(self, rows, weight, bias=None):
        self.rows16 = self.ops.cpu_to_bf16(rows)  # kept for the weight gradient instead of rows
        self.weight, self.has_bias = weight, bias is not None
        return bf16_rows_product(self.ops, self.rows16, weight, bias)

    def grad(self, dy):
        dy16 = self.ops.cpu_to_bf16(dy)  # one rounding for both products
        w = self.weight.reshape((1,) + tuple(self.weight.shape))
        dx = self.ops.dnnl_bmm(dy16, w, False, False, True)                # dy W
        dw = self.ops.dnnl_bmm(dy16, self.rows16, True, False, True)       # dy^T x
        dw = dw.reshape(tuple(self.weight.shape))
        return (dx, dw, dy.sum(dims=[0, 1])) if self.has_bias else (dx, dw)


def linear(x: jt.Var, weight: jt.Var, bias=None) -> jt.Var:
    """``x (..., in) @ weight (out, in)^T + bias``; bf16 products when enabled, else Jittor's own."""
    ops = (kernels.enabled_cpu_ops() if perf.bf16_products_enabled() and x.dtype == jt.float32
           and weight.dtype == jt.float32 and x.numel() > 0 else None)
    if ops is None:
        y = nn.matmul_transpose(x, weight)
        return y if bias is None else y + bias
    rows = x.reshape((1, -1, x.shape[-1]))
    if jt.flags.no_grad or (x.is_stop_grad() and weight.is_stop_grad()):
        y = bf16_rows_product(ops, rows, weight, bias)  # nothing to keep for a backward
    else:
        y = _Bf16Linear(ops)(rows, weight, bias) if bias is not None else _Bf16Linear(ops)(rows, weight)
    return y.reshape(tuple(x.shape[:-1]) + (weight.shape[0],))
