"""Depthwise convolution on channels-last tokens (the ConvNext head's 7x7 token mixer).

``depthwise_conv_nhwc(x, conv)`` equals ``conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)`` for a
depthwise ``nn.Conv2d`` (groups = channels, stride 1, padding k // 2, odd k, with bias). On the CPU
with fast kernels on it runs ``kernels/cpu_dwconv_nhwc_op.cc`` (no transposes, vectorised over
channels; oneDNN's plain-layout depthwise weight gradient was the slow part); otherwise the
``nn.Conv2d`` itself, the reference path.
"""
from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from . import kernels


def _fast_applies(x, conv) -> bool:
    k = conv.weight.shape[-1]
    return (isinstance(conv, nn.Conv2d) and conv.bias is not None and conv.groups == x.shape[-1]
            == conv.out_channels and tuple(conv.weight.shape[1:]) == (1, k, k) and k % 2 == 1
            and tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (k // 2, k // 2)
            and tuple(conv.dilation) == (1, 1))


def depthwise_conv_nhwc(x: jt.Var, conv: nn.Conv2d) -> jt.Var:
    """(B, H, W, C) -> (B, H, W, C) through the depthwise ``conv``."""
    ops = (kernels.enabled_cpu_ops() if x.dtype == jt.float32 and conv.weight.dtype == jt.float32
           and x.numel() > 0 and _fast_applies(x, conv) else None)
    if ops is None:
        return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return ops.cpu_dwconv_nhwc(x, conv.weight, conv.bias)
