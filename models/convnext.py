"""ConvNeXt-T (timm's ``convnext_tiny`` keys, ``num_classes=0``): the whole network, used as the
*parallel* auxiliary of paper Table XVII (an entire ConvNeXt-Tiny on the images instead of a few
blocks after the base model).

Layout as timm: ``stem.{0: 4x4/4 conv, 1: LayerNorm2d}``; ``stages.N.downsample.{0: LayerNorm2d,
1: 2x2/2 conv}`` for N > 0; ``stages.N.blocks.M.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma}``
(7x7 depthwise conv, channels-last LayerNorm, MLP 4x, layer scale 1e-6); ``head.norm`` (the
LayerNorm timm applies to the pooled feature). LayerNorm eps 1e-6 throughout.

Token view: the last stage's map flattened row-major; ``patch`` is ``head.norm`` of each token,
``cls`` the norm of their mean (timm's pooled feature).
"""
import math

from models import env  # noqa: F401  (Jittor's env before jittor loads)
import jittor as jt
from jittor import nn

from .layers.fast_norm import LayerNorm
from .layers.mlp import Mlp
from .layers.residual import DropPath, check_image
from .registry import register_model

LN_EPS = 1e-6


class LayerNorm2d(LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm ``LayerNorm2d``; same keys)."""

    def execute(self, x):
        return super().execute(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """x + drop_path(gamma * mlp(norm(conv_dw(x)))) on NCHW maps (norm and MLP channels-last)."""

    def __init__(self, dim, drop_path=0.0, ls_init_value=1e-6, mlp_ratio=4):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        self.gamma = jt.full((dim,), float(ls_init_value))
        self.drop_path = DropPath(drop_path)

    def execute(self, x):
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.mlp(self.norm(y)) * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXtStage(nn.Module):
    def __init__(self, in_dim, dim, depth, dpr, first):
        super().__init__()
        self.downsample = None if first else nn.Sequential(LayerNorm2d(in_dim, eps=LN_EPS),
                                                           nn.Conv2d(in_dim, dim, 2, stride=2))
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, dpr[i]) for i in range(depth)])

    def execute(self, x):
        if self.downsample is not None:
            x = self.downsample(x)
        return self.blocks(x)


class ConvNeXtHeadNorm(nn.Module):
    """timm's ``head`` with ``num_classes=0``: only its ``norm``."""

    def __init__(self, dim):
        super().__init__()
        self.norm = LayerNorm(dim, eps=LN_EPS)


class ConvNeXt(nn.Module):
    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), in_chans=3, drop_path_rate=0.0):
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError("ConvNeXt needs 4 stages: depths and dims must have length 4")
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=LN_EPS))
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, k, in_dim = [], 0, dims[0]
        for i in range(4):
            stages.append(ConvNeXtStage(in_dim, dims[i], depths[i], dpr[k:k + depths[i]], i == 0))
            k, in_dim = k + depths[i], dims[i]
        self.stages = nn.Sequential(*stages)
        self.head = ConvNeXtHeadNorm(dims[-1])
        self.num_features = dims[-1]
        self.feature_stride = 32
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):  # timm: trunc-normal(0.02), zero bias
                m.weight.assign(jt.init.trunc_normal_(jt.zeros(m.weight.shape), std=0.02))
                if m.bias is not None:
                    m.bias.assign(jt.zeros(m.bias.shape))

    def forward_features(self, x, mask=None):
        if mask is not None:
            raise ValueError("ConvNeXt does not support patch masking (mask must be None)")
        check_image(x, 32, "ConvNeXt")
        fmap = self.stages(self.stem(x))
        B, C, H, W = fmap.shape
        tokens = fmap.reshape(B, C, H * W).transpose(0, 2, 1)
        return {"cls": self.head.norm(tokens.mean(dim=1)), "patch": self.head.norm(tokens),
                "head_input": tokens, "grid": (int(H), int(W))}

    def execute(self, x):
        return self.forward_features(x)["cls"]


@register_model(options=("drop_path_rate",))
def convnext_tiny(**kwargs):
    cfg = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
    cfg.update(kwargs)  # smaller depths/dims for tests
    return ConvNeXt(**cfg)
