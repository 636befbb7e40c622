"""MAE's lightweight decoder and the pieces of its encoder recipe (He et al., 2022; facebookresearch/mae).

* :class:`MAEDecoder`: Linear embedding, its own mask token, fixed 2-D sin-cos position embeddings,
  ``depth`` pre-norm ViT blocks, LayerNorm and a Linear prediction layer; the CLS token is dropped
  from the output. MAE's ViT-B/L/H decoders have 8 blocks of width 512 with 16 heads.
* :func:`unshuffle`: visible tokens + mask tokens back to raster order (MAE ``forward_decoder``).
* :func:`patchify` / :func:`unpatchify`: images <-> (B, N, p * p * 3) patch rows, MAE's layout
  (each row is the patch's pixels in (row, column, channel) order).
* :func:`init_mae_weights`: MAE's initialisation (xavier-uniform Linear layers and patch embedding,
  zero biases, unit LayerNorms, normal(0.02) CLS and mask tokens).
* :class:`MultiLevelFusion`: MFF's (Liu et al., ICCV 2023) learned weighted fusion of several
  encoder blocks' outputs, read by the decoder instead of the last block's.
"""
import math

import numpy as np

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from .layers.fast_norm import LayerNorm
from .layers.pos_embed import sincos_2d_pos_embed
from .vit import LN_EPS, Block

__all__ = ["MAEDecoder", "MultiLevelFusion", "unshuffle", "patchify", "unpatchify", "init_mae_weights",
           "fixed_sincos_pos_embed"]


def fixed_sincos_pos_embed(dim, grid, cls_token=True):
    """The (1, N [+ 1], dim) sin-cos table of ``grid`` as a stop-grad Var (never trained)."""
    return jt.array(sincos_2d_pos_embed(dim, grid[0], grid[1], cls_token=cls_token))[None].stop_grad()


def unshuffle(visible, fill, restore_rows, num_patches):
    """(B, K, C) visible tokens + ``fill`` (1, 1, C) for the N - K masked ones -> (B, N, C) in raster order.

    ``restore_rows``: (B * N,) int32 rows into the flattened ``concat[visible, fill * (N - K)]`` of each
    image (image-major, ``b * N + ids_restore[b, i]``), i.e. MAE's gather by ``ids_restore``.
    """
    B, K, C = visible.shape
    N = int(num_patches)
    if tuple(restore_rows.shape) != (B * N,):
        raise ValueError(f"restore_rows must hold {B} x {N} rows, got shape {tuple(restore_rows.shape)}")
    seq = jt.concat([visible, fill.broadcast((B, N - K, C))], dim=1) if N > K else visible
    return seq.reshape(B * N, C)[restore_rows].reshape(B, N, C)


def patchify(imgs, patch_size):
    """(B, C, H, W) -> (B, h * w, p * p * C), rows in raster order (MAE's ``patchify``)."""
    B, C, H, W = imgs.shape
    p = int(patch_size)
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}")
    h, w = H // p, W // p
    return imgs.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, p * p * C)


def unpatchify(rows, patch_size, grid, channels=3):
    """Inverse of :func:`patchify`: (B, h * w, p * p * C) -> (B, C, h * p, w * p). numpy or Jittor."""
    B = rows.shape[0]
    h, w = grid
    p = int(patch_size)
    x = rows.reshape(B, h, w, p, p, channels)
    x = x.transpose(0, 5, 1, 3, 2, 4) if isinstance(x, np.ndarray) else x.permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, h * p, w * p)


def _xavier_uniform(var, fan_in, fan_out):
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    var.assign(jt.init.uniform(var.shape, "float32", -bound, bound))


def init_mae_weights(module):
    """MAE's ``initialize_weights``: xavier-uniform Linear weights (official JAX ViT), zero biases,
    LayerNorm 1/0; a patch embedding (``patch_embed.proj``) is initialised as a Linear on its
    flattened kernel; ``cls_token`` / ``mask_token`` ~ normal(0, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            _xavier_uniform(m.weight, m.weight.shape[1], m.weight.shape[0])
            if m.bias is not None:
                m.bias.assign(jt.zeros_like(m.bias))
        elif isinstance(m, LayerNorm) or (isinstance(m, nn.LayerNorm) and m.elementwise_affine):
            m.weight.assign(jt.ones_like(m.weight))
            m.bias.assign(jt.zeros_like(m.bias))
    proj = getattr(getattr(module, "patch_embed", None), "proj", None)
    if proj is not None:
        w = proj.weight
        _xavier_uniform(w, int(np.prod(w.shape[1:])), w.shape[0])
        if proj.bias is not None:
            proj.bias.assign(jt.zeros_like(proj.bias))
    for name in ("cls_token", "mask_token"):
        tok = getattr(module, name, None)
        if isinstance(tok, jt.Var):
            tok.assign(jt.init.gauss(tok.shape, "float32", 0.0, 0.02))


class MAEDecoder(nn.Module):
    """MAE's decoder: tokens (CLS first) -> one prediction of ``out_dim`` per patch.

    ``use_mask_token=False``: a decoder that only ever reads full grids (MAE + HSSL's pixel decoder
    after the head) has no mask token.
    ``execute(tokens, grid, restore_rows=None)``: ``tokens`` (B, 1 + K, in_dim). With ``restore_rows``
    the K patch tokens are the visible ones and the decoder puts its mask token at the other
    ``N - K`` positions (:func:`unshuffle`); without, they already cover the whole grid (K = N).
    Position embeddings are the fixed sin-cos table of ``grid`` (CLS row zero), added after the
    unshuffle as MAE does. Returns (B, N, out_dim).

    Keys: ``embed``, ``mask_token``, ``blocks.N.*``, ``norm``, ``pred`` (MAE: ``decoder_embed``,
    ``mask_token``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``).
    """

    def __init__(self, in_dim, out_dim, embed_dim=512, depth=8, num_heads=16, mlp_ratio=4.0, use_mask_token=True):
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = jt.zeros((1, 1, embed_dim)) if use_mask_token else None
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = LayerNorm(embed_dim, eps=LN_EPS)
        self.pred = nn.Linear(embed_dim, out_dim)
        init_mae_weights(self)

    def execute(self, tokens, grid, restore_rows=None):
        N = int(grid[0]) * int(grid[1])
        x = self.embed(tokens)
        patches = x[:, 1:]
        if restore_rows is not None:
            if self.mask_token is None:
                raise ValueError("this decoder was built without a mask token (use_mask_token=False): "
                                 "it reads full grids only")
            patches = unshuffle(patches, self.mask_token, restore_rows, N)
        elif patches.shape[1] != N:
            raise ValueError(f"without restore_rows the decoder needs all {N} patch tokens, got {patches.shape[1]}")
        x = jt.concat([x[:, :1], patches], dim=1) + fixed_sincos_pos_embed(self.embed_dim, grid)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, 1:]


class MultiLevelFusion(nn.Module):
    """MFF's multi-level feature fusion (Liu et al., "Improving Pixel-based MIM by Reducing Wasted
    Modeling Capability", ICCV 2023; MMPretrain ``MFFViT``): ``num_layers`` block outputs, the
    last one being the encoder's last block, fused into one token sequence::

        fused = sum_i softmax(weights)_i * P_i(x_i),   P_i = Linear(dim, dim) for the shallower
                                                       blocks, the identity for the last

    ``weights``: one logit per fused block, initialised to 1 (equal weights at the start), shaped
    (L, 1, 1, 1) as MMPretrain's ``proj_weights`` (so :func:`jhssl.optim.param_groups` decays it,
    as MMPretrain's parameter-wise config does: it exempts only norms, biases, position
    embeddings and tokens). With one fused block the fusion is the identity and ``weights`` is
    not trained (MMPretrain: ``requires_grad = False``). The projections get MAE's initialisation
    (xavier-uniform, zero bias), which MMPretrain applies to every Linear of the model.

    ``execute(layers)``: the list of L (B, T, C) block outputs (CLS included), shallowest first.
    """

    def __init__(self, dim, num_layers):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MultiLevelFusion needs at least one block to fuse, got {num_layers}")
        self.num_layers = int(num_layers)
        self.proj = nn.ModuleList([nn.Linear(dim, dim) for _ in range(self.num_layers - 1)])
        self.weights = jt.ones((self.num_layers, 1, 1, 1))
        if self.num_layers == 1:
            self.weights.stop_grad()
        init_mae_weights(self)

    def fusion_weights(self):
        """softmax over the fused blocks: the (L,) weights applied."""
        return nn.softmax(self.weights, dim=0).reshape(self.num_layers)

    def execute(self, layers):
        if len(layers) != self.num_layers:
            raise ValueError(f"this fusion takes {self.num_layers} block outputs, got {len(layers)}")
        projected = [p(x) for p, x in zip(self.proj, layers[:-1])] + [layers[-1]]
        w = self.fusion_weights()
        fused = w[0] * projected[0]  # term by term: under autocast the projections may be bf16
        for i in range(1, self.num_layers):
            fused = fused + w[i] * projected[i]
        return fused
