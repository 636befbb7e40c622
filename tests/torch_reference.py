"""Small, independent PyTorch references of the ViT and Swin building blocks (tests only).

Written directly from the papers' equations in plain torch (explicit softmax
attention, torch.roll shifts, slice-built shift masks, F.interpolate for the
position embedding), so that agreement with the Jittor models means both
compute the same function. Parameter names mirror the Jittor modules, so
:func:`copy_from_jittor` can move weights across by key.

Other test files may import: torch_attention, TorchViTBlock, TorchSwinBlock,
TorchPatchMerging, TorchViT, TorchSwin, torch_shift_mask, copy_from_jittor, to_torch.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# timm's fc1 -> exact GELU -> fc2 MLP: one module for these references and the benchmark twins
from benchmarks.torch_models import Mlp as TorchMlp  # noqa: E402


def to_torch(v) -> torch.Tensor:
    """A jittor Var / numpy array -> float32 torch tensor."""
    a = v.numpy() if hasattr(v, "numpy") and not isinstance(v, np.ndarray) else np.asarray(v)
    return torch.from_numpy(np.ascontiguousarray(a))


def copy_from_jittor(torch_module: nn.Module, jt_module, prefix: str = "", torch_only=()) -> None:
    """Load a Jittor module's state dict (optionally a sub-tree under ``prefix``) into ``torch_module``, strictly.
    ``torch_only``: key suffixes of torch's own state Jittor has no counterpart of (kept as they are),
    e.g. BatchNorm's ``num_batches_tracked``."""
    src = {k[len(prefix):]: v for k, v in jt_module.state_dict().items() if k.startswith(prefix)}
    dst = {k: v for k, v in torch_module.state_dict().items() if not k.endswith(tuple(torch_only))}
    missing = set(dst) - set(src)
    extra = set(src) - set(dst)
    if missing or extra:
        raise KeyError(f"key mismatch: missing in jittor {sorted(missing)}, extra in jittor {sorted(extra)}")
    torch_module.load_state_dict({k: to_torch(src[k]).reshape(dst[k].shape) for k in dst}, strict=not torch_only)


def torch_attention(x, qkv, proj, heads, bias=None):
    """Explicit multi-head softmax attention on (B, N, C) with an optional additive bias."""
    B, N, C = x.shape
    d = C // heads
    q, k, v = qkv(x).split(C, dim=-1)
    q, k, v = (t.reshape(B, N, heads, d).transpose(1, 2) for t in (q, k, v))
    logits = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(d)
    if bias is not None:
        logits = logits + bias
    out = torch.einsum("bhnm,bhmd->bhnd", logits.softmax(-1), v)
    return proj(out.transpose(1, 2).reshape(B, N, C))


class TorchSelfAttention(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias=None):
        return torch_attention(x, self.qkv, self.proj, self.heads, bias)


class TorchViTBlock(nn.Module):
    """Pre-norm ViT block, no drop path (eval)."""

    def __init__(self, dim, heads, mlp_ratio=4.0, qkv_bias=True, eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = TorchSelfAttention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = TorchMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TorchPatchEmbed(nn.Module):
    def __init__(self, in_chans, dim, patch, norm=False):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x):
        x = self.proj(x).permute(0, 2, 3, 1)  # (B, h, w, C)
        return self.norm(x) if self.norm is not None else x


class TorchViT(nn.Module):
    """Whole ViT: conv patch embedding, CLS, bicubically resized position embedding, blocks, final norm."""

    def __init__(self, img_size, patch, dim, depth, heads, mlp_ratio=4.0, in_chans=3, mask_token=False):
        super().__init__()
        g = img_size // patch
        self.grid = g
        self.patch_embed = TorchPatchEmbed(in_chans, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g + 1, dim))
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([TorchViTBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, mask=None):
        t = self.patch_embed(x)
        B, h, w, C = t.shape
        if mask is not None:
            m = mask.reshape(B, h, w, 1).to(t.dtype)
            t = t * (1 - m) + self.mask_token.reshape(1, 1, 1, C) * m
        t = t.reshape(B, h * w, C)
        pe = self.pos_embed
        if (h, w) != (self.grid, self.grid):
            grid = pe[:, 1:].reshape(1, self.grid, self.grid, C).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            pe = torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, C)], dim=1)
        z = torch.cat([self.cls_token.expand(B, 1, C), t], dim=1) + pe
        for blk in self.blocks:
            z = blk(z)
        out = self.norm(z)
        return {"cls": out[:, 0], "patch": out[:, 1:], "head_input": z[:, 1:]}


def _relative_index(wh, ww, table_w):
    """Index into a (2*table_w-1)^2 table for a wh x ww window (table built for table_w x table_w)."""
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    pts = torch.stack([ys.flatten(), xs.flatten()], dim=1)  # (N, 2)
    d = pts[:, None, :] - pts[None, :, :]
    return (d[..., 0] + table_w - 1) * (2 * table_w - 1) + (d[..., 1] + table_w - 1)


class TorchWindowAttention(nn.Module):
    def __init__(self, dim, window, heads, qkv_bias=True):
        super().__init__()
        self.window = window
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows, wh, ww, mask=None):
        """windows (B*nW, wh*ww, C); mask (nW, N, N) additive or None."""
        N = wh * ww
        idx = _relative_index(wh, ww, self.window)
        bias = self.relative_position_bias_table[idx.reshape(-1)].reshape(N, N, self.heads).permute(2, 0, 1)
        if mask is None:
            return torch_attention(windows, self.qkv, self.proj, self.heads, bias.unsqueeze(0))
        nW = mask.shape[0]
        Bw = windows.shape[0]
        full = (bias.unsqueeze(0) + mask.unsqueeze(1))  # (nW, heads, N, N)
        full = full.unsqueeze(0).expand(Bw // nW, -1, -1, -1, -1).reshape(Bw, self.heads, N, N)
        return torch_attention(windows, self.qkv, self.proj, self.heads, full)


def torch_shift_mask(Hp, Wp, wh, ww, sh, sw):
    """The original Swin's mask: label the 3x3 shifted regions with slices, compare labels per window."""
    img = torch.zeros(Hp, Wp)
    label = 0
    hs = (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)) if sh else (slice(None),)
    ws = (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)) if sw else (slice(None),)
    for a in hs:
        for b in ws:
            img[a, b] = label
            label += 1
    win = img.reshape(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class TorchSwinBlock(nn.Module):
    """Swin block on (B, H, W, C) with timm's small-map rule (window clamped, no shift) and padding."""

    def __init__(self, dim, heads, window=7, shifted=False, mlp_ratio=4.0, eps=1e-5):
        super().__init__()
        self.window = window
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = TorchWindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = TorchMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        B, H, W, C = x.shape
        wh, ww = min(H, self.window), min(W, self.window)
        sh = self.window // 2 if (self.shifted and H > self.window) else 0
        sw = self.window // 2 if (self.shifted and W > self.window) else 0
        y = self.norm1(x)
        ph, pw = (-H) % wh, (-W) % ww
        y = F.pad(y, (0, 0, 0, pw, 0, ph))
        Hp, Wp = H + ph, W + pw
        if sh or sw:
            y = torch.roll(y, shifts=(-sh, -sw), dims=(1, 2))
        win = y.reshape(B, Hp // wh, wh, Wp // ww, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, C)
        mask = torch_shift_mask(Hp, Wp, wh, ww, sh, sw) if (sh or sw) else None
        win = self.attn(win, wh, ww, mask)
        y = win.reshape(B, Hp // wh, Wp // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        if sh or sw:
            y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
        x = x + y[:, :H, :W]
        return x + self.mlp(self.norm2(x))


class TorchPatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class TorchSwinStage(nn.Module):
    def __init__(self, in_dim, dim, depth, heads, window, downsample):
        super().__init__()
        self.downsample = TorchPatchMerging(in_dim) if downsample else None
        self.blocks = nn.ModuleList([TorchSwinBlock(dim, heads, window, shifted=i % 2 == 1) for i in range(depth)])

    def forward(self, x):
        if self.downsample is not None:
            x = self.downsample(x)
        for b in self.blocks:
            x = b(x)
        return x


class TorchSwin(nn.Module):
    def __init__(self, patch=4, dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7, in_chans=3,
                 mask_token=False):
        super().__init__()
        self.patch_embed = TorchPatchEmbed(in_chans, dim, patch, norm=True)
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        dims = [dim * 2 ** i for i in range(len(depths))]
        self.layers = nn.ModuleList([
            TorchSwinStage(dims[max(i - 1, 0)], dims[i], depths[i], heads[i], window, downsample=i > 0)
            for i in range(len(depths))])
        self.norm = nn.LayerNorm(dims[-1])

    def forward(self, x, mask=None):
        t = self.patch_embed(x)
        B, h, w, C = t.shape
        if mask is not None:
            m = mask.reshape(B, h, w, 1).to(t.dtype)
            t = t * (1 - m) + self.mask_token.reshape(1, 1, 1, C) * m
        for layer in self.layers:
            t = layer(t)
        B, H, W, C = t.shape
        z = t.reshape(B, H * W, C)
        out = self.norm(z)
        return {"cls": out.mean(1), "patch": out, "head_input": z}
