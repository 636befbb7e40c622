"""Performance switches.

Fast kernels (oneDNN batched GEMM for attention on the CPU, cuBLAS batched
GEMM on the GPU, the fused softmax) are on by default. They can be turned
off, e.g. to compare against the plain Jittor reference path or to rule a
kernel out while debugging:

* environment: ``JHSSL_FAST_KERNELS=0`` (read once, at first use);
* code: ``jhssl.perf.set_fast_kernels(False)``, or temporarily
  ``with jhssl.perf.fast_kernels(False): ...``.

The switch is read when a graph is built (each call of an attention
function), not when it is executed.
"""
import contextlib
import os

_FALSE = ("0", "false", "off", "no")
_fast_kernels = None  # None: not decided yet, read the environment


def fast_kernels_enabled() -> bool:
    """True when models should use the fast custom kernels."""
    global _fast_kernels
    if _fast_kernels is None:
        _fast_kernels = os.environ.get("JHSSL_FAST_KERNELS", "1").strip().lower() not in _FALSE
    return _fast_kernels


def set_fast_kernels(enabled: bool) -> None:
    """Turn the fast kernels on or off for this process."""
    global _fast_kernels
    if not isinstance(enabled, bool):
        raise TypeError(f"set_fast_kernels expects a bool, got {type(enabled).__name__}")
    _fast_kernels = enabled


@contextlib.contextmanager
def fast_kernels(enabled: bool):
    """Context manager: run a block with the fast kernels on or off."""
    previous = fast_kernels_enabled()
    set_fast_kernels(enabled)
    try:
        yield
    finally:
        set_fast_kernels(previous)
