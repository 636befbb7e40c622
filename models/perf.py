"""Kernel switches of the models (``models/layers``).

* ``fast_kernels``: the fast custom kernels (oneDNN batched GEMM for attention on the CPU, cuBLAS
  batched GEMM on the GPU, the fused softmax and LayerNorm, the one-pass AdamW update on the CPU).
  On by default; environment ``JHSSL_FAST_KERNELS=0`` turns it off, to compare against the plain
  Jittor path or to rule the kernels out while debugging.

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

    def __init__(self, env):
        self.env, self.value = env, None  # None: not decided yet, read the environment

    def enabled(self) -> bool:
        if self.value is None:
            self.value = os.environ.get(self.env, "1").strip().lower() not in _FALSE
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
