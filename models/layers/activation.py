"""GELU (the exact erf form, as ``jittor.nn.GELU`` / ``torch.nn.GELU()``) with a fused CPU kernel.

On the CPU with fast kernels on (``models.perf``) the forward and the gradient are one vectorised
pass each (``kernels/cpu_gelu_op.cc``; Jittor's own GELU calls a scalar ``erf`` per element, twice
in the backward). Otherwise, or for non-float32 input, it is ``jittor.nn.gelu``, the reference path.
The kernel's erf approximation is within 1.5e-7 of erf (tests compare both paths).
:func:`linear_gelu` hands the linear layer's bias to the kernel (``models.perf.fused_bias``).
"""
from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from . import kernels
from .linear import deferred_bias


def gelu(x: jt.Var, bias=None) -> jt.Var:
    """``h * Phi(h)`` of ``h = x (+ bias over the last axis)``, Phi the standard normal CDF."""
    ops = kernels.enabled_cpu_ops() if x.dtype == jt.float32 and x.numel() > 0 else None
    if ops is None or (bias is not None and bias.dtype != jt.float32):
        return nn.gelu(x if bias is None else x + bias)
    return ops.cpu_gelu(x) if bias is None else ops.cpu_gelu(x, bias)


def linear_gelu(layer: nn.Linear, x: jt.Var) -> jt.Var:
    """``gelu(layer(x))``, the layer's bias added inside the GELU kernel where it runs."""
    return gelu(*deferred_bias(layer, x))


class GELU(nn.Module):
    """Drop-in for ``jittor.nn.GELU`` (no parameters) with the fused CPU kernel when enabled."""

    def execute(self, x: jt.Var) -> jt.Var:
        return gelu(x)
