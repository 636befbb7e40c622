"""Resizing position tables of a checkpoint to another resolution (numpy; conversion and export).

The bicubic arithmetic is :func:`models.resample.resize_bicubic` (torch's, as DINO/timm use for
position embeddings and Swin bias tables): one implementation for the models and the converter.
"""
from typing import Optional, Tuple

import numpy as np

from models.resample import resize_bicubic
from .errors import ArchMismatchError


def resize_pos_embed(pos: np.ndarray, new_len: int, num_prefix_tokens: int = 1,
                     new_grid: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Resize a (1, prefix + H*W, C) position embedding to (1, new_len, C) (square grids unless given)."""
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    n_old = grid.shape[1]
    s_old = int(round(np.sqrt(n_old)))
    if s_old * s_old != n_old:
        raise ArchMismatchError(f"pos_embed with {n_old} patch positions is not a square grid; cannot resize")
    n_new = new_len - num_prefix_tokens
    if new_grid is None:
        s_new = int(round(np.sqrt(n_new)))
        if s_new * s_new != n_new:
            raise ArchMismatchError(f"target pos_embed with {n_new} patch positions is not a square grid")
        new_grid = (s_new, s_new)
    C = pos.shape[-1]
    g = grid.reshape(s_old, s_old, C).transpose(2, 0, 1)       # (C, H, W)
    g = resize_bicubic(g, new_grid).transpose(1, 2, 0).reshape(1, -1, C)
    return np.concatenate([prefix, g], axis=1)


def resize_rel_pos_table(table: np.ndarray, new_len: int) -> np.ndarray:
    """Resize a Swin ((2W-1)^2, heads) relative-position bias table to (new_len, heads)."""
    L, heads = table.shape
    s_old, s_new = int(round(np.sqrt(L))), int(round(np.sqrt(new_len)))
    if s_old * s_old != L or s_new * s_new != new_len:
        raise ArchMismatchError(f"relative_position_bias_table lengths {L} -> {new_len} are not square")
    t = table.T.reshape(heads, s_old, s_old)
    return resize_bicubic(t, (s_new, s_new)).reshape(heads, new_len).T.copy()
