"""LayerNorm over the last axis with a fused CPU kernel (drop-in for ``jittor.nn.LayerNorm``).

Same parameters and keys (``weight``, ``bias``, shape (C,)), same initialisation and result as
``jt.nn.LayerNorm(C, eps)``. On the CPU with fast kernels on (``models.perf``) the forward pass and
its gradients are single-pass kernels (``kernels/cpu_layer_norm*_op.cc``); otherwise, or for
non-float32 input, it is Jittor's own LayerNorm (the reference path; on CUDA Jittor fuses it well).
"""
from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import os

import jittor as jt
from jittor import nn

from models import perf

from . import kernels

_LOW = ("bfloat16", "float16")


def layer_norm(x: jt.Var, weight: jt.Var, bias: jt.Var, eps: float = 1e-5) -> jt.Var:
    """LayerNorm of ``x`` over its last axis with affine ``weight``/``bias`` of shape (C,).

    bf16/fp16 input (mixed precision, jhssl.amp) is normalised in fp32 and the result stays fp32."""
    if str(x.dtype) in _LOW:
        x = x.float32()
    if jt.flags.use_cuda and perf.fast_kernels_enabled() and os.environ.get("JHSSL_CUDA_LAYERNORM") == "1":
        from .cuda_layer_norm import fused_layer_norm  # opt-in until checked on a GPU
        return fused_layer_norm(x, weight, bias, eps)
    ops = (kernels.enabled_cpu_ops() if x.dtype == jt.float32 and weight.dtype == jt.float32
           and bias.dtype == jt.float32 and x.numel() > 0 else None)
    if ops is not None:
        return ops.cpu_layer_norm(x, weight, bias, float(eps))
    return nn.layer_norm(x, (x.shape[-1],), weight, bias, eps)


class LayerNorm(nn.Module):
    """``jt.nn.LayerNorm(dim, eps)`` over the last axis, with the fused CPU kernel when enabled."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"LayerNorm dim must be a positive int (last axis only), got {dim!r}")
        self.normalized_shape = (dim,)
        self.eps = float(eps)
        self.weight = jt.ones((dim,))
        self.bias = jt.zeros((dim,))

    def execute(self, x: jt.Var) -> jt.Var:
        if x.shape[-1] != self.normalized_shape[0]:
            raise ValueError(f"LayerNorm({self.normalized_shape[0]}) got input with last axis {x.shape[-1]}")
        return layer_norm(x, self.weight, self.bias, self.eps)
