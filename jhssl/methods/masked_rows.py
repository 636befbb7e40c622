"""The patch tokens that enter iBOT's masked-patch loss, as rows of the flattened global crops.

iBOT's patch term for global crop q is ``mean_b [ sum_n m_bn * l_bn / max(sum_n m_bn, 1) ]``
(``l_bn`` the token's cross-entropy, ``m_bn`` its mask). Unmasked tokens have weight 0: their
student projections never reach the loss and get zero gradient. With the global crops' patch
tokens flattened to rows ``r = (q * B + b) * N + n``, the term summed over the crops and divided
by their number is ``sum_r w_r * l_r`` over the masked rows only, with
``w_r = 1 / (n_global * B * max(count_b, 1))``. So the student projects the masked rows only
(about 30% of the tokens with iBOT's masks), and the loss is the same number with the same
gradients, up to float summation order. The teacher's patch center (iBOT: the mean of *all* its
patch logits) is linear in the prototype layer's input, so the teacher runs its projection MLP on
every token but its prototype layer only on the masked rows and on one mean row.

``jhssl.perf.set_masked_projection(False)`` projects every token (the reference path).
"""
from jhssl import bootstrap  # noqa: F401

import numpy as np
import jittor as jt


def _as_numpy(mask):
    return np.asarray(mask.numpy() if isinstance(mask, jt.Var) else mask)


class MaskedRows:
    """Masked rows of the flattened global-crop patch tokens and their loss weights.

    ``masks``: one (B, N) or (B, H, W) mask per global crop. Attributes: ``index`` (M,) int32
    Var of rows into ``n_global * B * N``; ``weight`` (M,) float32 Var with ``sum_r w_r l_r``
    equal to iBOT's patch term; ``n_rows``, ``tokens_per_image``, ``n_global``. Built on the
    host from the mask values (the masks are data-loader inputs: reading them back costs a copy).

    When no token is masked (before iBOT's MIM start epoch) one row is kept with weight 0, so the
    term is exactly 0 and every parameter stays in the graph (zero gradient, as before).
    """

    def __init__(self, masks):
        ms = [_as_numpy(m) for m in masks]
        if not ms:
            raise ValueError("MaskedRows needs one mask per global crop, got none")
        flat = [m.reshape(m.shape[0], -1).astype(bool) for m in ms]
        shapes = {f.shape for f in flat}
        if len(shapes) != 1:
            raise ValueError(f"the global crops' masks differ in shape: {sorted(shapes)}")
        mask = np.concatenate(flat, axis=0)  # (n_global * B, N)
        self.n_global = len(flat)
        self.batch = flat[0].shape[0]
        self.tokens_per_image = mask.shape[1]
        self.n_rows = mask.size
        counts = np.maximum(mask.sum(axis=1), 1).astype(np.float64)
        per_image = 1.0 / (self.n_global * self.batch * counts)
        rows = np.flatnonzero(mask)
        weight = per_image[rows // self.tokens_per_image]
        if rows.size == 0:
            rows, weight = np.zeros(1, np.int64), np.zeros(1)
        self.n_masked = int(mask.sum())
        self.index = jt.array(rows.astype(np.int32)).stop_grad()
        self.weight = jt.array(weight.astype(np.float32)).stop_grad()

    def check_tokens(self, patch_tokens):
        """Raise a clear error when ``patch_tokens`` (R, N, C) do not match the masks."""
        shape = tuple(patch_tokens.shape)
        if len(shape) != 3 or shape[0] * shape[1] != self.n_rows:
            raise ValueError(f"the masks cover {self.n_global} global crops x {self.batch} images x "
                             f"{self.tokens_per_image} tokens, but the model produced patch tokens of "
                             f"shape {shape}")

    def take(self, x):
        """The masked rows of ``x`` ((R, N, C) tokens or (R * N, C) rows) as an (M, C) Var."""
        rows = x.reshape((-1, x.shape[-1])) if x.ndim == 3 else x
        if rows.shape[0] != self.n_rows:
            raise ValueError(f"expected {self.n_rows} patch rows (the masks' size), got {rows.shape[0]}")
        return rows[self.index]
