"""Giving freed memory back to the operating system.

Jittor's CPU allocator returns freed blocks to glibc's ``malloc`` (``jt.gc()``), and glibc keeps
them in the process heap for reuse: after a burst (a k-NN feature extraction at batch 256, the first
training steps) the resident size stays at its high-water mark. That matters when the process then
forks data workers: each child starts with the parent's resident pages (shared copy-on-write, but
counted in every child's RSS). ``malloc_trim(0)`` releases the free pages of the heap.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_free_memory"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_free_memory() -> bool:
    """``jt.gc()`` (Jittor's cached blocks back to malloc), then glibc's ``malloc_trim(0)`` (free
    heap pages back to the OS). Returns False where there is no ``malloc_trim``."""
    import jittor as jt
    jt.gc()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
