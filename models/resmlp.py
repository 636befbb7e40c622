"""ResMLP-12/24 base models (timm's ``resmlp_{12,24}_224`` keys, ``num_classes=0``).

The cross-patch layer is absolute-position (an N x N weight). It is built for ``img_size`` (224 ->
a 14x14 grid) and also runs on smaller inputs (e.g. 96-px local crops -> 6x6) by using the centred
sub-grid of its weight; see :class:`models.layers.residual.CrossPatchLinear` for why. Inputs larger
than ``img_size`` raise ``ValueError``.
"""
import math

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from .layers.activation import linear_gelu
from .layers.residual import Affine, CrossPatchLinear, DropPath, check_image, to_2tuple
from .layers.mask import apply_mask_token
from .registry import register_model

RESMLP_OPTIONS = ("img_size", "patch_size", "drop_path_rate", "use_mask_token")


class ChannelMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def execute(self, x):
        return self.fc2(linear_gelu(self.fc1, x))


class PatchStem(nn.Module):
    def __init__(self, patch_size, in_chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def execute(self, x):
        return self.proj(x)


class ResMLPBlock(nn.Module):
    """x + ls1 * cross_patch(norm1(x)); x + ls2 * mlp(norm2(x)) (timm ``ResBlock``)."""

    def __init__(self, dim, grid, mlp_ratio=4.0, init_values=1e-4, drop_path=0.0):
        super().__init__()
        self.norm1 = Affine(dim)
        self.linear_tokens = CrossPatchLinear(grid)
        self.drop_path = DropPath(drop_path)
        self.norm2 = Affine(dim)
        self.mlp_channels = ChannelMlp(dim, int(dim * mlp_ratio))
        self.ls1 = jt.full((dim,), init_values)
        self.ls2 = jt.full((dim,), init_values)

    def execute(self, x, grid):
        x = x + self.drop_path(self.ls1 * self.linear_tokens(self.norm1(x), grid))
        return x + self.drop_path(self.ls2 * self.mlp_channels(self.norm2(x)))


class ResMLP(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=384, depth=12, mlp_ratio=4.0,
                 init_values=1e-4, drop_path_rate=0.0, use_mask_token=False):
        super().__init__()
        img_size = to_2tuple(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.patch_size = int(patch_size)
        self.feature_stride = self.patch_size  # input pixels per output token
        self.build_grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_features = self.embed_dim = embed_dim
        self.stem = PatchStem(patch_size, in_chans, embed_dim)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            ResMLPBlock(embed_dim, self.build_grid, mlp_ratio, init_values, dpr[i]) for i in range(depth)])
        self.norm = Affine(embed_dim)
        self.use_mask_token = bool(use_mask_token)
        if use_mask_token:
            # iBOT-style masking (not in timm): masked patch embeddings become a learnable token,
            # zero-initialised as iBOT's; the key is absent without masking, so timm keys hold.
            self.mask_token = jt.zeros((1, 1, embed_dim))
        self._init_weights()

    def _init_weights(self):
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                # timm: trunc-normal(0.02) for Linear weights, zero bias
                m.weight.assign(jt.init.trunc_normal_(jt.zeros(m.weight.shape), std=0.02))
                if m.bias is not None:
                    m.bias.assign(jt.zeros(m.bias.shape))
        fan_in = self.stem.proj.in_channels * self.patch_size ** 2
        bound = 1.0 / math.sqrt(fan_in)
        self.stem.proj.weight.assign(jt.init.uniform(self.stem.proj.weight.shape, "float32", -bound, bound))

    def _tokens(self, x, mask=None):
        H, W = check_image(x, self.patch_size, "ResMLP")
        grid = (H // self.patch_size, W // self.patch_size)
        if grid[0] > self.build_grid[0] or grid[1] > self.build_grid[1]:
            raise ValueError(f"ResMLP built for {self.build_grid[0] * self.patch_size}x"
                             f"{self.build_grid[1] * self.patch_size} inputs cannot run on {H}x{W}; "
                             f"build it with img_size >= the largest input")
        x = self.stem(x)
        B, C = x.shape[0], x.shape[1]
        if mask is not None:
            x = apply_mask_token(x.permute(0, 2, 3, 1), mask, self.mask_token).permute(0, 3, 1, 2)
        x = x.reshape(B, C, grid[0] * grid[1]).transpose(0, 2, 1)
        for blk in self.blocks:
            x = blk(x, grid)
        return x, grid

    def forward_features(self, x, mask=None):
        if mask is not None and not self.use_mask_token:
            raise ValueError("a mask was given but the model was built without use_mask_token=True")
        tokens, grid = self._tokens(x, mask)
        patch = self.norm(tokens)
        return {"cls": patch.mean(dim=1), "patch": patch, "head_input": tokens, "grid": grid}

    def execute(self, x):
        tokens, _ = self._tokens(x)
        return self.norm(tokens).mean(dim=1)


@register_model(options=RESMLP_OPTIONS)
def resmlp_12_224(**kwargs):
    cfg = dict(patch_size=16, embed_dim=384, depth=12, init_values=0.1)
    cfg.update(kwargs)  # smaller widths/depths for tests
    return ResMLP(**cfg)


@register_model(options=RESMLP_OPTIONS)
def resmlp_24_224(**kwargs):
    cfg = dict(patch_size=16, embed_dim=384, depth=24, init_values=1e-5)
    cfg.update(kwargs)
    return ResMLP(**cfg)
