"""Performance switches.

Each switch is on by default and can be turned off to compare against the plain reference path
or to rule an optimisation out while debugging:

* ``fast_kernels``: the fast custom kernels (oneDNN batched GEMM for attention on the CPU, cuBLAS
  batched GEMM on the GPU, the fused softmax and LayerNorm, the one-pass AdamW update on the CPU).
  Environment ``JHSSL_FAST_KERNELS=0``.
* ``masked_projection``: iBOT's masked-patch terms only see the masked tokens, so the student
  projects only those tokens and the teacher runs its prototype layer only on them plus one mean
  row for the center (``jhssl.methods.masked_rows``). Same loss and gradients; off, every patch
  token is projected. Environment ``JHSSL_MASKED_PROJECTION=0``.

In code: ``jhssl.perf.set_fast_kernels(False)`` / ``set_masked_projection(False)``, or temporarily
``with jhssl.perf.fast_kernels(False): ...`` / ``with jhssl.perf.masked_projection(False): ...``.
Environment variables are read once, at first use. A switch is read when a graph is built (each
forward call), not when it is executed.
"""
import contextlib
import os

_FALSE = ("0", "false", "off", "no")


class _Switch:
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


_FAST_KERNELS = _Switch("JHSSL_FAST_KERNELS")
_MASKED_PROJECTION = _Switch("JHSSL_MASKED_PROJECTION")


def fast_kernels_enabled() -> bool:
    """True when models should use the fast custom kernels."""
    return _FAST_KERNELS.enabled()


def set_fast_kernels(enabled: bool) -> None:
    """Turn the fast kernels on or off for this process."""
    _FAST_KERNELS.set(enabled, "set_fast_kernels")


def fast_kernels(enabled: bool):
    """Context manager: run a block with the fast kernels on or off."""
    return _FAST_KERNELS.scoped(enabled, "fast_kernels")


def masked_projection_enabled() -> bool:
    """True when iBOT patch terms project only the masked tokens (see the module docstring)."""
    return _MASKED_PROJECTION.enabled()


def set_masked_projection(enabled: bool) -> None:
    """Turn the masked-token projection on or off for this process."""
    _MASKED_PROJECTION.set(enabled, "set_masked_projection")


def masked_projection(enabled: bool):
    """Context manager: run a block with the masked-token projection on or off."""
    return _MASKED_PROJECTION.scoped(enabled, "masked_projection")
