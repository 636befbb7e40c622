"""Resampling of absolute position embeddings to another patch grid."""
import math
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt

from models.resample import bicubic_matrix


@lru_cache(maxsize=64)
def _grid_matrix(old_size: Tuple[int, int], new_size: Tuple[int, int]) -> np.ndarray:
    # Bicubic resize is separable: the 2-D resize of a row-major grid is kron(Mh, Mw).
    return np.kron(bicubic_matrix(old_size[0], new_size[0]),
                   bicubic_matrix(old_size[1], new_size[1])).astype(np.float32)


_MATRIX_VARS = {}


def _grid_matrix_var(old_size, new_size) -> jt.Var:
    # A constant per size pair: build the Var once instead of uploading it every step.
    key = (old_size, new_size)
    if key not in _MATRIX_VARS:
        _MATRIX_VARS[key] = jt.array(_grid_matrix(old_size, new_size)).stop_grad()
    return _MATRIX_VARS[key]


def resample_abs_pos_embed(posemb: jt.Var, new_size: Tuple[int, int], old_size: Optional[Tuple[int, int]] = None,
                           num_prefix_tokens: int = 1) -> jt.Var:
    """Bicubic resample of (1, prefix + gh*gw, C) position embeddings to a new patch grid.

    As DINO does: the prefix (CLS) embeddings are kept, only the patch-grid
    part is interpolated. The interpolation is one GEMM with a cached
    (new_h*new_w, gh*gw) weight matrix, so it is cheap and differentiable.
    ``old_size`` defaults to a square grid.
    """
    new_size = (int(new_size[0]), int(new_size[1]))
    n_grid = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(math.isqrt(n_grid))
        if side * side != n_grid:
            raise ValueError(f"cannot infer a square grid from {n_grid} position embeddings; pass old_size")
        old_size = (side, side)
    old_size = (int(old_size[0]), int(old_size[1]))
    if old_size[0] * old_size[1] != n_grid:
        raise ValueError(f"old_size {old_size} does not match {n_grid} grid position embeddings")
    if new_size == old_size:
        return posemb
    prefix = posemb[:, :num_prefix_tokens] if num_prefix_tokens else None
    grid = posemb[0, num_prefix_tokens:]  # (gh*gw, C)
    weight = _grid_matrix_var(old_size, new_size)
    grid = jt.matmul(weight, grid).unsqueeze(0)
    return grid if prefix is None else jt.concat([prefix, grid], dim=1)
