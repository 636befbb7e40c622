"""iBOT-style masked image modelling: replace masked patch embeddings by a learnable token."""
import numpy as np

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt


def _as_bool_mask(mask, B: int, h: int, w: int) -> jt.Var:
    """Validate a patch mask and return it as a bool Var of shape (B, h, w)."""
    if not isinstance(mask, jt.Var):
        mask = jt.array(np.asarray(mask))
    shape = tuple(mask.shape)
    if shape == (B, h * w):
        mask = mask.reshape(B, h, w)
    elif shape != (B, h, w):
        raise ValueError(f"mask must have shape (B, H, W) = {(B, h, w)} or (B, N) = {(B, h * w)} "
                         f"over the patch grid, got {shape}")
    if mask.dtype != jt.bool:
        if mask.dtype not in (jt.int8, jt.int16, jt.int32, jt.int64, jt.uint8):
            raise ValueError(f"mask must be boolean (or 0/1 integers), got dtype {mask.dtype}")
        mask = mask != 0
    return mask.stop_grad()


def apply_mask_token(tokens: jt.Var, mask, mask_token: jt.Var) -> jt.Var:
    """tokens (B, h, w, C); positions where ``mask`` is True take ``mask_token`` (1, 1, C).

    A select (not a blend) so unmasked positions are bit-identical and masked
    ones carry exactly the token, and gradients flow to the token only from
    masked positions.
    """
    B, h, w, C = tokens.shape
    mask = _as_bool_mask(mask, B, h, w)
    cond = mask.unsqueeze(-1).broadcast(tokens.shape)
    token = mask_token.reshape(1, 1, 1, C).broadcast(tokens.shape)
    return jt.ternary(cond, token, tokens)
