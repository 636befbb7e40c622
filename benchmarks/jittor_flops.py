"""FLOPs of a Jittor training step, counted the way torch's FlopCounterMode counts them.

The benchmark's FLOP figures come from the torch twins (``benchmarks/torch_models.py``), which exist for
the ConvNext head only; the quick search trains six different heads, so its FLOPs are counted here, on
the Jittor code itself.

What is counted (as FlopCounterMode): matrix products and convolutions, 2 FLOPs per multiply-add, nothing
else (no elementwise work, no softmax, no norms). The Python entry points every model in this repository
reaches them through are wrapped while the counter is active: ``jittor.nn.matmul_transpose`` (``nn.Linear``,
the patch embedding, the weight-normed prototype layer), ``models.layers.linear.linear`` (``nn.Linear`` under
the CPU's bf16 autocast), ``jt.matmul``, the attention products (``models.layers.attention._bmm3``, and
``self_attention``, whose fused CPU op makes both products in one call),
``nn.Conv.execute`` and the channels-last depthwise conv (``models.layers.dwconv.depthwise_conv_nhwc``); a product made inside another counted call
(e.g. the plain-Jittor fallback of ``_bmm3``) is counted once.

Forward passes are counted as they run; the backward pass is added for each product as FlopCounterMode
would count it: a product whose operands both need a gradient costs twice its forward (the gradients of
both operands); the patch embedding reads pixels, so only its weight gradient is computed (once its
forward), or nothing when its weight is frozen (MoCo v3's ``freeze_patch_embed``). Work under
``jt.no_grad()`` (the teacher) has no backward. :attr:`JittorFlops.step_flops` is the sum.
``tests/test_benchmark_tools.py`` checks the count against FlopCounterMode on the torch ViT and on the
iBOT twins.
"""
from __future__ import annotations

import math

__all__ = ["JittorFlops"]


class JittorFlops:
    """Context manager: ``with JittorFlops() as fc: method.compute_loss(...)``; then ``fc.step_flops``."""

    def __init__(self):
        self.forward = 0
        self.backward = 0
        self._depth = 0  # > 0 inside a counted call: its inner products are not counted again
        self._pixel_input = []  # per open patch-embedding call: is its weight trained
        self._saved = []

    @property
    def step_flops(self) -> int:
        return self.forward + self.backward

    def _add(self, flops: int):
        import jittor as jt
        self.forward += flops
        if jt.flags.no_grad:
            return
        if self._pixel_input:  # no gradient of the pixels; the weight's when it is trained
            self.backward += flops if self._pixel_input[-1] else 0
        else:
            self.backward += 2 * flops

    def _wrap(self, owner, name, flops_of):
        original = getattr(owner, name)
        counter = self

        def counted(*args, **kwargs):
            counter._depth += 1
            try:
                out = original(*args, **kwargs)
            finally:
                counter._depth -= 1
            if counter._depth == 0:
                counter._add(int(flops_of(out, *args, **kwargs)))
            return out

        self._saved.append((owner, name, original))
        setattr(owner, name, counted)

    def _wrap_pixel_input(self, owner, name):
        """Everything ``owner.name`` (the patch embedding) computes reads the images."""
        original = getattr(owner, name)
        counter = self

        def scoped(module, *args, **kwargs):
            counter._pixel_input.append(any(p.requires_grad for p in module.parameters()))
            try:
                return original(module, *args, **kwargs)
            finally:
                counter._pixel_input.pop()

        self._saved.append((owner, name, original))
        setattr(owner, name, scoped)

    def __enter__(self):
        import jittor as jt
        from jittor import nn

        from models.layers import attention, dwconv, linear, patch_embed

        def by_inner_dim(out, a, b, *rest, **kw):  # (.., K) x (K, N) or (.., K) x (N, K)^T
            return 2 * math.prod(out.shape) * a.shape[-1]

        def bmm3(out, a, b, trans_a=False, trans_b=False):
            return 2 * math.prod(out.shape) * (a.shape[1] if trans_a else a.shape[2])

        def self_attention(out, qkv, *rest, **kw):  # q k^T and P v: 2 x (2 B N N C), C = H x D
            b, n, c3 = qkv.shape
            return 4 * b * n * n * (c3 // 3)

        def conv(out, module, x):
            kh, kw = (module.kernel_size if isinstance(module.kernel_size, (tuple, list))
                      else (module.kernel_size, module.kernel_size))
            return 2 * math.prod(out.shape) * (module.in_channels // module.groups) * kh * kw

        self._wrap(nn, "matmul_transpose", by_inner_dim)
        self._wrap(nn, "matmul", by_inner_dim)
        self._wrap(jt, "matmul", by_inner_dim)  # the same function under a second name: both are called
        self._wrap(attention, "_bmm3", bmm3)
        self._wrap(attention, "self_attention", self_attention)
        self._wrap(linear, "linear", by_inner_dim)  # the CPU bf16 path (jhssl.amp) calls its kernel directly
        self._wrap(nn.Conv, "execute", conv)
        self._wrap(dwconv, "depthwise_conv_nhwc", lambda out, x, module: conv(out, module, x))
        self._wrap_pixel_input(patch_embed.PatchEmbed, "execute")
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()
        return False
