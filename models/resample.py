"""Torch-compatible bicubic resampling in numpy (no jittor): the one implementation.

Used by the position-embedding resampling inside the models (``models.layers.pos_embed``, as a
cached GEMM) and by weight conversion (``jhssl.resize``: ``pos_embed`` and Swin bias tables of a
checkpoint at another resolution).
"""
from functools import lru_cache
from typing import Tuple

import numpy as np


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution weights for the 4 taps at offsets -1, 0, 1, 2 (A = -0.75, as PyTorch)."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix M with M @ v == 1-D bicubic resize of v.

    Same sampling as ``torch.nn.functional.interpolate(mode='bicubic',
    align_corners=False)`` with an explicit output size: source coordinate
    ``(i + 0.5) * in / out - 0.5``, taps clamped at the border.
    """
    m = np.zeros((out_size, in_size), dtype=np.float64)
    if in_size == out_size:
        np.fill_diagonal(m, 1.0)
        return m
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    base = np.floor(src).astype(np.int64)
    w = _cubic_weights(src - base)
    for tap in range(4):
        idx = np.clip(base - 1 + tap, 0, in_size - 1)
        np.add.at(m, (np.arange(out_size), idx), w[:, tap])
    return m


def resize_bicubic(x: np.ndarray, out_hw: Tuple[int, int]) -> np.ndarray:
    """Resize (..., H, W) to (..., h, w) with torch's bicubic (align_corners=False) arithmetic."""
    H, W = x.shape[-2:]
    h, w = out_hw
    if (H, W) == (h, w):
        return x.copy()
    y = np.einsum("ih,...hw,jw->...ij", bicubic_matrix(H, h), x.astype(np.float64), bicubic_matrix(W, w))
    return y.astype(x.dtype)
