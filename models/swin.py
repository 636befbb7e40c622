"""Swin Transformer base models in timm 1.0's key layout.

Layout (equal to timm's ``swin_*_patch4_window7_224`` with ``num_classes=0``):
``patch_embed.{proj,norm}``, ``layers.N.downsample`` (patch merging) at the
*start* of stages 1..3, ``layers.N.blocks.M.{norm1, attn.qkv,
attn.relative_position_bias_table, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``.
The relative-position index and the shift masks are derived constants, kept
out of the state dict (timm 1.0 registers them as non-persistent buffers, and
its reference key lists do not contain them).

Other input sizes (96-px local crops, 32-px CPU runs), the rule timm 1.0 uses,
but evaluated on the actual feature size at run time rather than fixed at
construction:
* where a stage's feature map is no larger than the window along an axis, the
  window shrinks to the map along that axis and that axis is not shifted
  (so a 7x7 map at 224 px, or a 2x2 map at 32 px, is one unshifted window);
* otherwise the (normed) map is zero-padded at the bottom/right to a multiple
  of the window, as timm and the original Swin do, and cropped afterwards.
A shrunk window reads the centre of the same (2*7-1)^2 bias table, so the
parameters do not depend on the input size.
"""
from typing import Optional, Tuple, Union

import numpy as np

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from .layers import DropPath, Mlp, PatchEmbed, apply_mask_token, init_linear_and_norm, to_2tuple, trunc_normal_
from .layers.attention import scaled_dot_product_attention, split_heads
from .registry import register_model

from .layers.fast_norm import LayerNorm  # fused CPU kernel; same keys and result as nn.LayerNorm
SHIFT_MASK_VALUE = -100.0  # the original Swin's additive mask value; exp(-100) underflows to 0 after softmax


def _pad_to(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def window_partition(x: jt.Var, window_size: Union[int, Tuple[int, int]]) -> jt.Var:
    """(B, H, W, C) -> (B * nW, wh * ww, C); windows in row-major order, batch-major.

    H and W must be multiples of the window (pad first).
    """
    wh, ww = to_2tuple(window_size)
    B, H, W, C = x.shape
    if H % wh or W % ww:
        raise ValueError(f"feature map {H}x{W} is not a multiple of the window {wh}x{ww}; pad it first")
    x = x.reshape(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_reverse(windows: jt.Var, window_size: Union[int, Tuple[int, int]], H: int, W: int) -> jt.Var:
    """Inverse of :func:`window_partition`: (B * nW, wh * ww, C) (or (B * nW, wh, ww, C)) -> (B, H, W, C)."""
    wh, ww = to_2tuple(window_size)
    C = windows.shape[-1]
    x = windows.reshape(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def _shift_mask_numpy(H: int, W: int, window: Tuple[int, int], shift: Tuple[int, int]) -> np.ndarray:
    """Region labels of the cyclically shifted map, windowed; pairs from different regions get the mask value."""
    wh, ww = window
    sh, sw = shift
    Hp, Wp = _pad_to(H, wh), _pad_to(W, ww)
    labels = np.zeros((Hp, Wp), dtype=np.int64)
    # After rolling by -shift, the last `shift` rows/cols hold pixels from the
    # opposite border: they must not attend to the rest of their window.
    row_bounds = [(0, Hp - wh), (Hp - wh, Hp - sh), (Hp - sh, Hp)] if sh else [(0, Hp)]
    col_bounds = [(0, Wp - ww), (Wp - ww, Wp - sw), (Wp - sw, Wp)] if sw else [(0, Wp)]
    region = 0
    for r0, r1 in row_bounds:
        for c0, c1 in col_bounds:
            labels[r0:r1, c0:c1] = region
            region += 1
    win = labels.reshape(Hp // wh, wh, Wp // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = win[:, :, None] != win[:, None, :]
    return np.where(diff, SHIFT_MASK_VALUE, 0.0).astype(np.float32)


_MASK_CACHE = {}


def shift_window_mask(H: int, W: int, window_size: Union[int, Tuple[int, int]],
                      shift_size: Union[int, Tuple[int, int]]) -> Optional[jt.Var]:
    """Additive attention mask for shifted windows on an H x W map: (nW, wh*ww, wh*ww), or None without shift.

    H and W are rounded up to window multiples (the padding :class:`SwinTransformerBlock` applies).
    The mask is a constant, built once per geometry and cached.
    """
    window, shift = to_2tuple(window_size), to_2tuple(shift_size)
    if shift == (0, 0):
        return None
    if not (0 <= shift[0] < window[0] and 0 <= shift[1] < window[1]):
        raise ValueError(f"shift {shift} must lie in [0, window {window})")
    key = (int(H), int(W), window, shift)
    if key not in _MASK_CACHE:
        _MASK_CACHE[key] = jt.array(_shift_mask_numpy(int(H), int(W), window, shift)).stop_grad()
    return _MASK_CACHE[key]


def relative_position_index(window: Tuple[int, int], table_window: Tuple[int, int]) -> np.ndarray:
    """(wh*ww, wh*ww) indices into a (2*Th-1)*(2*Tw-1) bias table built for window ``table_window``.

    For a window smaller than the table's, relative offsets are a subset of
    the table's range, so the same parameters serve every window size.
    """
    wh, ww = window
    th, tw = table_window
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N), offsets in (-w, w)
    return ((rel[0] + th - 1) * (2 * tw - 1) + (rel[1] + tw - 1)).astype(np.int32)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a learned relative-position bias.

    ``execute(x, mask=None, window=None)`` with x (B * nW, N, C), N = wh * ww of
    ``window`` (default: the full ``window_size`` square); ``mask`` the additive
    (nW, N, N) shift mask, or None.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = to_2tuple(window_size)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        th, tw = self.window_size
        self.relative_position_bias_table = jt.zeros(((2 * th - 1) * (2 * tw - 1), num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self._index_cache = {}  # leading underscore: not a parameter, not in the state dict
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _relative_position_bias(self, window: Tuple[int, int]) -> jt.Var:
        if window not in self._index_cache:
            idx = relative_position_index(window, self.window_size).reshape(-1)
            self._index_cache[window] = jt.array(idx).stop_grad()
        N = window[0] * window[1]
        bias = self.relative_position_bias_table[self._index_cache[window]]  # (N*N, heads)
        return bias.reshape(N, N, self.num_heads).permute(2, 0, 1)  # (heads, N, N)

    def execute(self, x: jt.Var, mask: Optional[jt.Var] = None, window: Optional[Tuple[int, int]] = None) -> jt.Var:
        window = self.window_size if window is None else to_2tuple(window)
        B_, N, C = x.shape
        if N != window[0] * window[1]:
            raise ValueError(f"window attention got {N} tokens per window, expected {window[0]}x{window[1]}")
        q, k, v = split_heads(self.qkv(x), 3, self.num_heads)  # (B_, heads, N, D)
        bias = self._relative_position_bias(window)
        if mask is None:
            out = scaled_dot_product_attention(q, k, v, attn_bias=bias.unsqueeze(0), scale=self.scale)
        else:
            nW = mask.shape[0]
            if B_ % nW or tuple(mask.shape[1:]) != (N, N):
                raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit {B_} windows of {N} tokens")
            # Fold the window index into the head axis, (B, nW*heads, N, D), so the
            # (nW, heads, N, N) bias+mask broadcasts over the batch without a copy.
            B = B_ // nW
            fold = (B, nW * self.num_heads, N, self.head_dim)
            attn_bias = (bias.unsqueeze(0) + mask.unsqueeze(1)).reshape(1, nW * self.num_heads, N, N)
            out = scaled_dot_product_attention(q.reshape(fold), k.reshape(fold), v.reshape(fold),
                                               attn_bias=attn_bias, scale=self.scale)
            out = out.reshape(B_, self.num_heads, N, self.head_dim)
        return self.proj(out.permute(0, 2, 1, 3).reshape(B_, N, C))


class SwinTransformerBlock(nn.Module):
    """(Shifted) window attention block on channels-last maps (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shifted: bool = False,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0, norm_eps: float = 1e-5):
        super().__init__()
        self.window_size = int(window_size)
        self.shift_size = self.window_size // 2 if shifted else 0
        self.norm1 = LayerNorm(dim, eps=norm_eps)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias)
        self.norm2 = LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def window_and_shift(self, H: int, W: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """timm's rule per axis: a map no larger than the window is one window, unshifted."""
        window = tuple(min(r, self.window_size) for r in (H, W))
        shift = tuple(0 if r <= self.window_size else self.shift_size for r in (H, W))
        return window, shift

    def _dp(self, x):
        return x if self.drop_path is None else self.drop_path(x)

    def _attn(self, x: jt.Var) -> jt.Var:
        B, H, W, C = x.shape
        (wh, ww), (sh, sw) = self.window_and_shift(H, W)
        Hp, Wp = _pad_to(H, wh), _pad_to(W, ww)
        if (Hp, Wp) != (H, W):
            x = jt.nn.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))  # channels-last: (C, W, H) pairs
        if sh or sw:
            x = jt.roll(x, (-sh, -sw), (1, 2))
        windows = window_partition(x, (wh, ww))
        mask = shift_window_mask(Hp, Wp, (wh, ww), (sh, sw))
        windows = self.attn(windows, mask=mask, window=(wh, ww))
        x = window_reverse(windows, (wh, ww), Hp, Wp)
        if sh or sw:
            x = jt.roll(x, (sh, sw), (1, 2))
        if (Hp, Wp) != (H, W):
            x = x[:, :H, :W, :]
        return x

    def execute(self, x: jt.Var) -> jt.Var:
        B, H, W, C = x.shape
        x = x + self._dp(self._attn(self.norm1(x)))
        x = x.reshape(B, H * W, C)
        x = x + self._dp(self.mlp(self.norm2(x)))
        return x.reshape(B, H, W, C)


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C).

    Channel order of the concatenation is (0,0), (1,0), (0,1), (1,1) (row, col
    offsets), as the original Swin and timm; odd maps are zero-padded.
    """

    def __init__(self, dim: int, out_dim: Optional[int] = None, norm_eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim or 2 * dim
        self.norm = LayerNorm(4 * dim, eps=norm_eps)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def execute(self, x: jt.Var) -> jt.Var:
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            x = jt.nn.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # channels-last: (C, W, H) pairs
            H, W = H + H % 2, W + W % 2
        # (B, H/2, dh, W/2, dw, C) -> (B, H/2, W/2, dw, dh, C): column offset outer, row offset inner.
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)
        return self.reduction(self.norm(x))


class SwinTransformerStage(nn.Module):
    def __init__(self, dim: int, out_dim: int, depth: int, num_heads: int, window_size: int, downsample: bool,
                 mlp_ratio: float, qkv_bias: bool, drop_path_rates):
        super().__init__()
        self.downsample = PatchMerging(dim, out_dim) if downsample else None
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(out_dim, num_heads, window_size, shifted=(i % 2 == 1), mlp_ratio=mlp_ratio,
                                 qkv_bias=qkv_bias, drop_path=drop_path_rates[i])
            for i in range(depth)])

    def execute(self, x: jt.Var) -> jt.Var:
        if self.downsample is not None:
            x = self.downsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x


def upsample_mask(mask, h: int, w: int):
    """A (B, mh, mw) (or (B, mh * mw) square) patch mask repeated up to an h x w grid (mh | h, mw | w)."""
    if not isinstance(mask, jt.Var):
        mask = jt.array(np.asarray(mask))
    if mask.ndim == 2:
        side = int(round(mask.shape[1] ** 0.5))
        if side * side != mask.shape[1]:
            raise ValueError(f"a flat mask of {mask.shape[1]} cells is not square; give (B, H, W)")
        mask = mask.reshape(mask.shape[0], side, side)
    B, mh, mw = mask.shape
    if (mh, mw) == (h, w):
        return mask
    if h % mh or w % mw:
        raise ValueError(f"mask grid {mh}x{mw} does not divide the patch-embedding grid {h}x{w}: masks for "
                         f"Swin follow its last stage (patch_size * {2 ** 3} pixels) or its patch grid")
    rh, rw = h // mh, w // mw
    return mask.reshape(B, mh, 1, mw, 1).broadcast((B, mh, rh, mw, rw)).reshape(B, h, w)


class SwinTransformer(nn.Module):
    """Swin backbone without classifier (timm ``num_classes=0``); pooled feature = mean of the normed last stage."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0,
                 use_mask_token=False, num_classes=0):
        super().__init__()
        if num_classes:
            raise ValueError("jhssl base models carry no classifier: num_classes must be 0")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must have the same length")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.embed_dim = embed_dim
        self.num_layers = len(depths)
        dims = [embed_dim * 2 ** i for i in range(self.num_layers)]
        self.num_features = dims[-1]
        self.window_size = window_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                      norm_layer=lambda d: LayerNorm(d, eps=1e-5))
        ph, pw = self.patch_embed.patch_size
        self.patch_size = ph if ph == pw else (ph, pw)  # an int for square patches, as DINO's models expose
        self.feature_stride = ph * 2 ** (self.num_layers - 1)  # input pixels per last-stage token
        if use_mask_token:
            self.mask_token = jt.zeros((1, 1, embed_dim))  # iBOT initialises it to zeros
        self.use_mask_token = use_mask_token
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        layers, start, in_dim = [], 0, embed_dim
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            layers.append(SwinTransformerStage(in_dim, dims[i], depth, heads, window_size, downsample=i > 0,
                                               mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                               drop_path_rates=rates[start:start + depth]))
            start += depth
            in_dim = dims[i]
        self.layers = nn.ModuleList(layers)
        self.norm = LayerNorm(self.num_features, eps=1e-5)
        init_linear_and_norm(self.layers, std=0.02)
        init_linear_and_norm(self.norm)
        init_linear_and_norm(self.patch_embed.norm)

    def no_weight_decay(self):
        return {"relative_position_bias_table", "mask_token"}

    def forward_features(self, x: jt.Var, mask=None) -> dict:
        if mask is not None and not self.use_mask_token:
            raise ValueError("a mask was given but the model was built without use_mask_token=True")
        x, _ = self.patch_embed(x)  # (B, h, w, C), normed
        if mask is not None:
            # iBOT's Swin masks after the patch-embedding norm, with masks drawn on the last stage's
            # grid (its patch_size * 8 pixels, as iBOT and the HSSL authors' code): each mask cell is
            # repeated over the patch embeddings it covers, so the masked-patch loss reads the last
            # stage's tokens on the masks' own grid.
            x = apply_mask_token(x, upsample_mask(mask, x.shape[1], x.shape[2]), self.mask_token)
        for layer in self.layers:
            x = layer(x)
        B, H, W, C = x.shape
        head_input = x.reshape(B, H * W, C)
        patch = self.norm(head_input)
        return {"cls": patch.mean(dim=1), "patch": patch, "head_input": head_input, "grid": (H, W)}

    def execute(self, x: jt.Var, mask=None) -> jt.Var:
        return self.forward_features(x, mask=mask)["cls"]


SWIN_SIZES = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}


# Options training code may pass; iBOT masks follow the last stage's grid (patch_size * 8 pixels), see
# SwinTransformer.forward_features.
SWIN_OPTIONS = ("img_size", "patch_size", "drop_path_rate", "use_mask_token")


def _swin(size: str, kwargs: dict) -> SwinTransformer:
    cfg = dict(SWIN_SIZES[size], patch_size=4, window_size=7)
    cfg.update(kwargs)
    return SwinTransformer(**cfg)


@register_model(options=SWIN_OPTIONS, mask_patch_multiple=8)
def swin_tiny_patch4_window7_224(**kwargs):
    return _swin("tiny", kwargs)


@register_model(options=SWIN_OPTIONS, mask_patch_multiple=8)
def swin_small_patch4_window7_224(**kwargs):
    return _swin("small", kwargs)


@register_model(options=SWIN_OPTIONS, mask_patch_multiple=8)
def swin_base_patch4_window7_224(**kwargs):
    return _swin("base", kwargs)


@register_model(options=SWIN_OPTIONS, mask_patch_multiple=8)
def swin_tiny(**kwargs):
    return _swin("tiny", kwargs)


@register_model(options=SWIN_OPTIONS, mask_patch_multiple=8)
def swin_small(**kwargs):
    return _swin("small", kwargs)


@register_model(options=SWIN_OPTIONS, mask_patch_multiple=8)
def swin_base(**kwargs):
    return _swin("base", kwargs)
