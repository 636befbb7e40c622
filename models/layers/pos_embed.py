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


def sincos_2d_pos_embed(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> np.ndarray:
    """MAE's fixed 2-D sine-cosine position embedding, (grid_h * grid_w [+ 1], dim) float32.

    As ``get_2d_sincos_pos_embed`` of facebookresearch/mae (util/pos_embed.py): the first half of
    the channels encodes the column (x) index, the second half the row (y) index; each half is
    ``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = 10000 ** (-k / (dim / 4))``, k < dim / 4.
    Tokens are in raster order (row-major). ``cls_token`` prepends an all-zero row.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embeddings need a dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64),
                             indexing="ij")

    def half(pos):
        out = pos.reshape(-1, 1) * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([half(cols), half(rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb.astype(np.float32)
