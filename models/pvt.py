"""PVT-v2-b2 base model (timm's ``pvt_v2_b2`` keys, ``num_classes=0``).

The paper's tables use PVT-Small (PVT v1). timm ships no PVT v1; ``pvt_v2_b2`` (25M parameters, the
same four-stage pyramid with spatial-reduction attention and a similar size) is the **stand-in for
PVT-Small** in jhssl.

Tokens for HSSL: the last stage (C = 512) flattened row-major. ``head_input`` is the last stage before
its norm, ``patch`` after it, ``cls``/``execute`` their mean (timm's average-pooled feature). Inputs
must have sides divisible by 32 (a stride-4 stem and three stride-2 downsamplings, and each stage's
spatial reduction must divide its map).
"""
import math

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from .layers.activation import gelu
from .layers.attention import scaled_dot_product_attention, split_heads
from .layers.residual import DropPath, check_image
from .registry import register_model

from .layers.fast_norm import LayerNorm  # fused CPU kernel; same keys and result as nn.LayerNorm

def _to_map(x, grid):
    """(B, N, C) -> (B, C, H, W)."""
    B, N, C = x.shape
    return x.transpose(0, 2, 1).reshape(B, C, grid[0], grid[1])


def _to_tokens(x):
    """(B, C, H, W) -> (B, H*W, C)."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H * W).transpose(0, 2, 1)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_chans, dim, patch_size, stride):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = LayerNorm(dim, eps=1e-5)

    def execute(self, x):
        x = self.proj(x)
        grid = (int(x.shape[2]), int(x.shape[3]))
        return self.norm(_to_tokens(x)), grid


class SRAttention(nn.Module):
    """Multi-head attention whose keys/values come from a ``sr_ratio``-times reduced map."""

    def __init__(self, dim, num_heads, sr_ratio):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = LayerNorm(dim, eps=1e-5)

    def execute(self, x, grid):
        B, N, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        q = self.q(x).reshape(B, N, h, d).transpose(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x = self.norm(_to_tokens(self.sr(_to_map(x, grid))))
        k, v = split_heads(self.kv(x), 2, h)
        out = scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(0, 2, 1, 3).reshape(B, N, C))


class DWConvMlp(nn.Module):
    """fc1 -> 3x3 depthwise conv -> GELU -> fc2 (PVT-v2's convolutional feed-forward)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def execute(self, x, grid):
        x = _to_tokens(self.dwconv(_to_map(self.fc1(x), grid)))
        return self.fc2(gelu(x))


class PVTBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, sr_ratio, drop_path=0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = SRAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = DWConvMlp(dim, int(dim * mlp_ratio))

    def execute(self, x, grid):
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x), grid))


class PVTStage(nn.Module):
    def __init__(self, in_dim, dim, depth, num_heads, mlp_ratio, sr_ratio, first, dpr):
        super().__init__()
        # timm's layout: stage 0's stride-4 embedding is the model's ``patch_embed``; stages 1-3 start
        # with a stride-2 overlapping embedding named ``downsample``.
        self.downsample = None if first else OverlapPatchEmbed(in_dim, dim, 3, 2)
        self.blocks = nn.ModuleList([PVTBlock(dim, num_heads, mlp_ratio, sr_ratio, dpr[i]) for i in range(depth)])
        self.norm = LayerNorm(dim, eps=1e-6)

    def execute(self, x, grid=None):
        """x: (B, C, H, W) map, or (B, N, C) tokens with their grid for stage 0 -> pre-norm tokens, grid."""
        if self.downsample is not None:
            x, grid = self.downsample(x)
        for blk in self.blocks:
            x = blk(x, grid)
        return x, grid


class PyramidVisionTransformerV2(nn.Module):
    def __init__(self, in_chans=3, embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), num_heads=(1, 2, 5, 8),
                 mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1), drop_path_rate=0.0):
        super().__init__()
        if not (len(embed_dims) == len(depths) == len(num_heads) == len(mlp_ratios) == len(sr_ratios) == 4):
            raise ValueError("PVT-v2 needs 4 stages: every per-stage option must have length 4")
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.patch_embed = OverlapPatchEmbed(in_chans, embed_dims[0], 7, 4)
        stages, in_dim, k = [], embed_dims[0], 0
        for i in range(4):
            stages.append(PVTStage(in_dim, embed_dims[i], depths[i], num_heads[i], mlp_ratios[i], sr_ratios[i],
                                   i == 0, dpr[k:k + depths[i]]))
            in_dim, k = embed_dims[i], k + depths[i]
        self.stages = nn.ModuleList(stages)
        self.num_features = embed_dims[-1]
        self.feature_stride = 32  # input pixels per last-stage token (4 x 2 x 2 x 2)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.weight.assign(jt.init.trunc_normal_(jt.zeros(m.weight.shape), std=0.02))
                if m.bias is not None:
                    m.bias.assign(jt.zeros(m.bias.shape))
            elif isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.assign(jt.randn(m.weight.shape) * math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.assign(jt.zeros(m.bias.shape))

    def _last_stage(self, x):
        check_image(x, 32, "PVT-v2")
        n = len(self.stages)
        x, grid = self.patch_embed(x)
        for i, stage in enumerate(self.stages):
            tokens, grid = stage(x, grid)
            if i < n - 1:
                x = _to_map(stage.norm(tokens), grid)
        return tokens, grid

    def forward_features(self, x, mask=None):
        if mask is not None:
            raise ValueError("PVT-v2 does not support patch masking (mask must be None)")
        tokens, grid = self._last_stage(x)
        patch = self.stages[-1].norm(tokens)
        return {"cls": patch.mean(dim=1), "patch": patch, "head_input": tokens, "grid": grid}

    def execute(self, x):
        tokens, _ = self._last_stage(x)
        return self.stages[-1].norm(tokens).mean(dim=1)


@register_model(options=("drop_path_rate",))
def pvt_v2_b2(**kwargs):
    """PVT-v2-b2: the stand-in for the paper's PVT-Small (see module docstring)."""
    cfg = dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), num_heads=(1, 2, 5, 8),
               mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1))
    cfg.update(kwargs)  # smaller widths/depths for tests
    return PyramidVisionTransformerV2(**cfg)
