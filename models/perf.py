"""Kernel switches of the models (``models/layers``).

* ``fast_kernels``: the fast custom kernels (oneDNN batched GEMM for attention on the CPU, cuBLAS
  batched GEMM on the GPU, the fused softmax, LayerNorm, GELU and DINO / iBOT cross-entropy, the
  one-pass AdamW update on the CPU).
  On by default; environment ``JHSSL_FAST_KERNELS=0`` turns it off, to compare against the plain
  Jittor path or to rule the kernels out while debugging.
* ``bf16_products``: linear layers and attention products round their operands to bfloat16 inside
  oneDNN's GEMM (fp32 accumulation and result; every Var stays float32). The CPU side of mixed
  precision (``jhssl.amp``, ``amp: true``), worth it where the CPU has native bf16 instructions
  (AVX512_BF16 / AMX: about twice fp32's GEMM rate). Off by default; needs the fast kernels (without
  them the products stay fp32). Set by ``jhssl.amp.autocast``; no environment variable.
* ``fused_bias``: a linear layer whose output goes straight into the fused GELU or attention kernel
  hands its bias to that kernel, which adds it while reading the product and sums its gradient in
  its backward pass (``models.layers.linear.deferred_bias``): no separate pass over the output for
  either. On by default (with the fast kernels, fp32 products); off to measure against.

In code: ``set_fast_kernels(False)``, or temporarily ``with fast_kernels(False): ...``.
The environment variable is read once, at first use. A switch is read when a graph is built (each
forward call), not when it is executed. Training-side switches (``masked_projection``) live in
:mod:`jhssl.perf`, which re-exports these.
"""
import contextlib
import os

_FALSE = ("0", "false", "off", "no")


class Switch:
    """One on/off setting: environment default, a setter and a context manager."""

    def __init__(self, env, default=True):
        self.env, self.value = env, None  # None: not decided yet, read the environment
        self.default = default

    def enabled(self) -> bool:
        if self.value is None:
            raw = os.environ.get(self.env) if self.env else None
            self.value = self.default if raw is None else raw.strip().lower() not in _FALSE
        return self.value

    def set(self, enabled: bool, name: str) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"{name} expects a bool, got {type(enabled).__name__}")
        self.value = enabled

    @contextlib.contextmanager
    def scoped(self, enabled: bool, name: str):
        previous = self.enabled()
        self.set(enabled, name)
        try:
            yield
        finally:
            self.set(previous, name)


_FAST_KERNELS = Switch("JHSSL_FAST_KERNELS")


def fast_kernels_enabled() -> bool:
    """True when models should use the fast custom kernels."""
    return _FAST_KERNELS.enabled()


def set_fast_kernels(enabled: bool) -> None:
    """Turn the fast kernels on or off for this process."""
    _FAST_KERNELS.set(enabled, "set_fast_kernels")


def fast_kernels(enabled: bool):
    """Context manager: run a block with the fast kernels on or off."""
    return _FAST_KERNELS.scoped(enabled, "fast_kernels")


_BF16_PRODUCTS = Switch(None, default=False)


def bf16_products_enabled() -> bool:
    """True when linear layers and attention products run in bf16 inside oneDNN (CPU, fast kernels)."""
    return _BF16_PRODUCTS.enabled() and fast_kernels_enabled()


def bf16_products(enabled: bool):
    """Context manager: build the graphs of a block with bf16 products on or off."""
    return _BF16_PRODUCTS.scoped(enabled, "bf16_products")


_FUSED_BIAS = Switch(None, default=True)


def fused_bias_enabled() -> bool:
    """True when the fused GELU / attention kernels add the preceding linear layer's bias themselves."""
    return _FUSED_BIAS.enabled()


def fused_bias(enabled: bool):
    """Context manager: build the graphs of a block with the bias fused into the consumer kernel or not."""
    return _FUSED_BIAS.scoped(enabled, "fused_bias")
