"""Image -> patch tokens, channels-last."""
from typing import Tuple, Union

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from .weight_init import init_conv_like_torch


def to_2tuple(v) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding (a stride = kernel = ``patch_size`` conv).

    The parameters live in ``proj`` (an ``nn.Conv2d``, so keys and shapes are
    timm's ``patch_embed.proj.weight/bias``), but the forward pass runs the
    conv as one GEMM on the unfolded patches: with stride equal to kernel the
    two are the same computation, and Jittor's oneDNN GEMM is ~2.5x faster
    than its conv for this shape (forward+backward, ViT-S/16 at 224 on CPU).

    Returns ``(tokens, (h, w))`` with tokens laid out (B, h, w, embed_dim),
    after ``norm`` when one is given (Swin normalises here, ViT does not).
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: Union[int, Tuple[int, int]] = 16,
                 in_chans: int = 3, embed_dim: int = 768, norm_layer=None):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.check_img_size(*self.img_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size)
        init_conv_like_torch(self.proj)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def check_img_size(self, H: int, W: int) -> Tuple[int, int]:
        """Grid size for an H x W input; ValueError when the patch size does not divide it."""
        ph, pw = self.patch_size
        if H % ph or W % pw or H <= 0 or W <= 0:
            raise ValueError(f"input size {H}x{W} is not divisible by the patch size {ph}x{pw}; "
                             f"use a multiple of the patch size (e.g. {max(ph, H // ph * ph)}x{max(pw, W // pw * pw)})")
        return H // ph, W // pw

    def execute(self, x: jt.Var):
        if x.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        B, C, H, W = x.shape
        if C != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {C} (input shape {tuple(x.shape)})")
        h, w = self.check_img_size(H, W)
        ph, pw = self.patch_size
        patches = x.reshape(B, C, h, ph, w, pw).permute(0, 2, 4, 1, 3, 5).reshape(B * h * w, C * ph * pw)
        weight = self.proj.weight.reshape(self.embed_dim, C * ph * pw)
        tokens = nn.matmul_transpose(patches, weight)
        if self.proj.bias is not None:
            tokens = tokens + self.proj.bias
        tokens = tokens.reshape(B, h, w, self.embed_dim)
        if self.norm is not None:
            tokens = self.norm(tokens)
        return tokens, (h, w)
