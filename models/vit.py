"""Vision Transformer (ViT) base models: timm's key layout, DINO/iBOT behaviour.

* Keys, shapes and parameter counts equal timm's ``vit_*`` with ``num_classes=0``
  (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.*``, ``norm``).
* Any input size the patch size divides: the patch-grid part of ``pos_embed``
  is resampled bicubically to the input's grid, the CLS part is kept (DINO).
* iBOT masking: with ``use_mask_token=True`` a learnable ``mask_token`` (1, 1, C)
  replaces masked patch embeddings before the position embedding is added.
* MAE: :meth:`VisionTransformer.forward_visible` runs the blocks on the visible patches only.
"""
from typing import Optional

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from .layers import DropPath, Mlp, PatchEmbed, apply_mask_token, init_linear_and_norm, resample_abs_pos_embed, \
    trunc_normal_
from .layers import attention
from .layers.attention import split_heads
from .layers.linear import deferred_bias
from .registry import register_model

from .layers.fast_norm import LayerNorm  # fused CPU kernel; same keys and result as nn.LayerNorm
LN_EPS = 1e-6  # timm's ViT uses LayerNorm(eps=1e-6)


class Attention(nn.Module):
    """Multi-head self-attention on (B, N, C); the attention math is the shared SDPA entry point."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def execute(self, x: jt.Var, attn_bias: Optional[jt.Var] = None) -> jt.Var:
        # qkv's bias goes to the fused attention kernel where it runs (models.layers.linear.deferred_bias)
        qkv, qkv_bias = deferred_bias(self.qkv, x)
        return self.proj(attention.self_attention(qkv, self.num_heads, self.scale, attn_bias, qkv_bias=qkv_bias))

    def attention_probs(self, x: jt.Var) -> jt.Var:
        """softmax(q k^T * scale): the (B, heads, N, N) attention weights (for visualisation)."""
        q, k, _ = split_heads(self.qkv(x), 3, self.num_heads)
        return nn.softmax(jt.matmul(q, k.permute(0, 1, 3, 2)) * self.scale, dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block: x + DP(attn(norm1(x))), then x + DP(mlp(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, norm_eps: float = LN_EPS):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def _dp(self, x):
        return x if self.drop_path is None else self.drop_path(x)

    def execute(self, x: jt.Var) -> jt.Var:
        x = x + self._dp(self.attn(self.norm1(x)))
        return x + self._dp(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT backbone without classifier (timm ``num_classes=0``)."""

    def __init__(self, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                 qkv_bias=True, drop_path_rate=0.0, use_mask_token=False, in_chans=3, num_classes=0):
        super().__init__()
        if num_classes:
            raise ValueError("jhssl base models carry no classifier: num_classes must be 0")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        ph, pw = self.patch_embed.patch_size
        self.patch_size = ph if ph == pw else (ph, pw)  # an int for square patches, as DINO's models expose
        self.feature_stride = ph  # input pixels per output token
        self.cls_token = jt.zeros((1, 1, embed_dim))
        self.pos_embed = jt.zeros((1, self.patch_embed.num_patches + 1, embed_dim))
        if use_mask_token:
            self.mask_token = jt.zeros((1, 1, embed_dim))  # iBOT initialises it to zeros
        self.use_mask_token = use_mask_token
        # Stochastic depth decays linearly from 0 to drop_path_rate over the blocks.
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=rates[i]) for i in range(depth)])
        self.norm = LayerNorm(embed_dim, eps=LN_EPS)

        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        init_linear_and_norm(self.blocks, std=0.02)
        init_linear_and_norm(self.norm)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token", "mask_token"}

    def _pos_embed(self, grid):
        return resample_abs_pos_embed(self.pos_embed, grid, old_size=self.patch_embed.grid_size,
                                      num_prefix_tokens=self.num_prefix_tokens)

    def prepare_tokens(self, x: jt.Var, mask=None):
        """(CLS + patch tokens with position embeddings (B, 1 + h*w, C), (h, w)): the blocks' input."""
        if mask is not None and not self.use_mask_token:
            raise ValueError("a mask was given but the model was built without use_mask_token=True")
        tokens, (h, w) = self.patch_embed(x)
        B, C = tokens.shape[0], self.embed_dim
        if mask is not None:
            tokens = apply_mask_token(tokens, mask, self.mask_token)
        tokens = tokens.reshape(B, h * w, C)
        x = jt.concat([self.cls_token.broadcast((B, 1, C)), tokens], dim=1)
        return x + self._pos_embed((h, w)), (h, w)

    def get_intermediate_layers(self, x: jt.Var, n: int = 1) -> list:
        """The outputs of the last ``n`` blocks, each through the final norm (DINO's linear-probe features)."""
        if not 1 <= n <= len(self.blocks):
            raise ValueError(f"n must be in [1, {len(self.blocks)}], got {n}")
        x, _ = self.prepare_tokens(x)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i >= len(self.blocks) - n:
                out.append(self.norm(x))
        return out

    def get_last_selfattention(self, x: jt.Var) -> jt.Var:
        """The last block's attention weights (B, heads, 1 + h*w, 1 + h*w) (DINO's visualisation)."""
        x, _ = self.prepare_tokens(x)
        depth = len(self.blocks)
        for i in range(depth - 1):
            x = self.blocks[i](x)
        last = self.blocks[depth - 1]
        return last.attn.attention_probs(last.norm1(x))

    def _encode(self, x: jt.Var, grid, layers=()) -> dict:
        """The blocks and the final norm on the tokens ``x`` (CLS first) -> ``forward_features``'s
        dict; with ``layers`` (0-based block indices) also ``"layers"``: those blocks' (B, T, C)
        pre-norm outputs, taken on the way (MFF's decoder reads them)."""
        layers = tuple(int(i) for i in layers)
        if any(not 0 <= i < len(self.blocks) for i in layers):
            raise ValueError(f"layers must be block indices in [0, {len(self.blocks) - 1}], got {list(layers)}")
        taken = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in layers:
                taken.append(x)
        normed = self.norm(x)
        out = {"cls": normed[:, 0], "patch": normed[:, 1:], "head_input": x[:, 1:], "grid": grid}
        if layers:
            out["layers"] = taken
        return out

    def forward_features(self, x: jt.Var, mask=None, layers=()) -> dict:
        """Normed CLS / patch tokens, the pre-norm patch tokens (``head_input``) and the grid; with
        ``layers``, also ``"layers"``: those blocks' (B, 1 + N, C) pre-norm outputs."""
        x, grid = self.prepare_tokens(x, mask)
        return self._encode(x, grid, layers)

    def forward_visible(self, x: jt.Var, keep_rows: jt.Var, num_keep: int, layers=()) -> dict:
        """MAE's encoder: the blocks see the CLS token and the visible patches only.

        ``keep_rows``: (B * num_keep,) int32 rows of the flattened (B * N) patch tokens to keep,
        image-major (image b's rows are ``b * N + i``); every image keeps ``num_keep`` patches.
        Position embeddings are added before the patches are dropped (MAE ``forward_encoder``), so
        the order of the kept rows does not matter. Returns ``forward_features``'s dict with
        ``patch`` / ``head_input`` holding the (B, num_keep, C) visible tokens only (and ``layers``
        the listed blocks' (B, 1 + num_keep, C) outputs, computed once on the way).
        """
        tokens, (h, w) = self.patch_embed(x)
        B, C = tokens.shape[0], self.embed_dim
        pos = self._pos_embed((h, w))
        tokens = tokens.reshape(B, h * w, C) + pos[:, 1:]
        if tuple(keep_rows.shape) != (B * num_keep,):
            raise ValueError(f"keep_rows must hold {B} x {num_keep} rows, got shape {tuple(keep_rows.shape)}")
        visible = tokens.reshape(B * h * w, C)[keep_rows].reshape(B, num_keep, C)
        x = jt.concat([(self.cls_token + pos[:, :1]).broadcast((B, 1, C)), visible], dim=1)
        return self._encode(x, (h, w), layers)

    def execute(self, x: jt.Var, mask=None) -> jt.Var:
        return self.forward_features(x, mask=mask)["cls"]


VIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


def _vit(size: str, patch_size: int, kwargs: dict) -> VisionTransformer:
    cfg = dict(VIT_SIZES[size], patch_size=patch_size)
    cfg.update(kwargs)
    return VisionTransformer(**cfg)


def _vit_fixed_patch(size: str, patch_size: int, kwargs: dict) -> VisionTransformer:
    """timm names carry their patch size: another one asked for is an error, not silently used."""
    asked = kwargs.pop("patch_size", patch_size)
    if asked != patch_size:
        raise ValueError(f"this ViT has patch size {patch_size} (in its name); got patch_size={asked}")
    return _vit(size, patch_size, kwargs)


# Options training code may pass (see models.registry.model_info).
VIT_OPTIONS = ("img_size", "patch_size", "drop_path_rate", "use_mask_token")


# DINO-style names: the patch size is an argument.
@register_model(options=VIT_OPTIONS)
def vit_tiny(patch_size=16, **kwargs):
    return _vit("tiny", patch_size, kwargs)


@register_model(options=VIT_OPTIONS)
def vit_small(patch_size=16, **kwargs):
    return _vit("small", patch_size, kwargs)


@register_model(options=VIT_OPTIONS)
def vit_base(patch_size=16, **kwargs):
    return _vit("base", patch_size, kwargs)


@register_model(options=VIT_OPTIONS)
def vit_large(patch_size=16, **kwargs):
    return _vit("large", patch_size, kwargs)


# timm names: the patch size is part of the name.
@register_model(options=VIT_OPTIONS)
def vit_tiny_patch16_224(**kwargs):
    return _vit_fixed_patch("tiny", 16, kwargs)


@register_model(options=VIT_OPTIONS)
def vit_small_patch16_224(**kwargs):
    return _vit_fixed_patch("small", 16, kwargs)


@register_model(options=VIT_OPTIONS)
def vit_small_patch8_224(**kwargs):
    return _vit_fixed_patch("small", 8, kwargs)


@register_model(options=VIT_OPTIONS)
def vit_base_patch16_224(**kwargs):
    return _vit_fixed_patch("base", 16, kwargs)


@register_model(options=VIT_OPTIONS)
def vit_base_patch8_224(**kwargs):
    return _vit_fixed_patch("base", 8, kwargs)


@register_model(options=VIT_OPTIONS)
def vit_large_patch16_224(**kwargs):
    return _vit_fixed_patch("large", 16, kwargs)
