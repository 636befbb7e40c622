"""HSSL auxiliary heads (paper Sec. 3.2 unified framework, Sec. 3.6, Eq. 9).

A head is ``depth`` blocks run serially on the base model's ``head_input`` tokens laid out on their
grid, channels-last ``(B, H, W, C)``. Every block is written in the paper's unified form

    x <- x + TokenMixer(x)        (for single-branch blocks, the whole block is the "mixer")
    x <- x + ChannelMlp(x)        (two-branch blocks only)

and exposes both branches (:meth:`HeadBlock.mixer`, :meth:`HeadBlock.channel_mlp`), so the
residual formula can be checked from outside.

First-block shortcut (Sec. 3.6, Table 5). With ``first_shortcut=False`` (default) the first block
outputs ``F1(z)`` instead of ``z + F1(z)``: it drops its token-mixer shortcut (single-branch blocks:
their only shortcut), while its MLP shortcut stays. The head therefore cannot pass the base's tokens
through unchanged and must build its own representation. Drop path is applied only to branches that
have a shortcut (dropping the whole output of the first block would zero the head's input).

Architectures (``HEAD_ARCHS``):

* ``convnext`` - the authors' block: 7x7 depthwise conv, LayerNorm, Linear 4x, GELU, Linear
  (keys ``dwconv``/``norm``/``pwconv1``/``pwconv2``), one branch, no layer scale.
* ``resnet`` - bottleneck 1x1 -> 3x3 -> 1x1 (width dim/4) with BatchNorm and ReLU, one branch.
  There is no ReLU after the addition: the unified form is ``x + F(x)``, and a post-add ReLU would
  also clip the base's tokens on the shortcut. BatchNorm is ``jittor.nn.BatchNorm``, which all-reduces
  the batch statistics across ranks under MPI (``sync=True``), i.e. it is a synchronised BatchNorm.
* ``resmlp`` - Affine norm, cross-patch linear, layer scale; Affine norm, channel MLP 4x, layer scale
  (timm's ResMLP keys). The cross-patch weight is built for ``max_grid`` (default 14x14, ViT/16 at
  224 px) and smaller grids (local crops, the 7x7 maps of hierarchical bases) use its centred
  sub-grid, so global and local crops share one set of weights; see
  :class:`models.layers.residual.CrossPatchLinear`. Larger grids raise ``ValueError`` (pass
  ``max_grid=28`` for patch-8 ViTs).
* ``poolformer`` - GroupNorm(1), 3x3 average pool minus identity, layer scale; GroupNorm(1), MLP 4x,
  layer scale (timm's PoolFormer keys ``layer_scale1.scale``...; the MLP is Linear on channels-last).
* ``vit`` - pre-norm global self-attention block (``Attention``/``Mlp`` of :mod:`models.vit`).
* ``swin`` - pre-norm window attention block, windows shifted by half a window on odd blocks
  (:mod:`models.swin`). Any grid: the window is clamped to the grid and the grid is padded to a
  multiple of the window; padded positions are masked out as keys.

Layer-scale init for ResMLP/PoolFormer heads is 0.1 (``layer_scale_init``): the heads are 3 blocks
deep and the first block has no shortcut, so a 1e-5 init (deep PoolFormers) would make the head's
output ~1e-5 and the final LayerNorm's eps would swamp it.

Output (as the authors' code): the image-level token is the mean of the head's output tokens; the
final LayerNorm ``norm`` (eps 1e-6) is applied to ``concat[mean, patches]``.
:class:`MultiAuxHead` runs several heads on the same tokens and concatenates their outputs along
channels (Eq. 9), each head with its own final norm.
"""
import math
from typing import Dict, Sequence, Union

import numpy as np

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from .layers.activation import linear_gelu
from .layers import dwconv as depthwise
from .layers.mlp import Mlp
from .layers.residual import Affine, BatchNorm2d, CrossPatchLinear, DropPath, to_2tuple
from .resmlp import ChannelMlp
from .swin import SHIFT_MASK_VALUE, WindowAttention, shift_window_mask, window_partition, window_reverse
from .vit import Attention
from .layers.fast_norm import LayerNorm  # fused CPU kernel; same keys and result as nn.LayerNorm

from models.head_archs import HEAD_ARCHS  # noqa: E402,F401  (the one list; jittor-free for config parsing)
HEAD_LN_EPS = 1e-6


def _nchw(x):
    return x.permute(0, 3, 1, 2)


def _nhwc(x):
    return x.permute(0, 2, 3, 1)


def _trunc_normal_linears(module):
    for m in module.modules():
        if isinstance(m, nn.Linear) and not isinstance(m, CrossPatchLinear):
            m.weight.assign(jt.init.trunc_normal_(jt.zeros(m.weight.shape), std=0.02))
            if m.bias is not None:
                m.bias.assign(jt.zeros(m.bias.shape))


def _default_heads(dim, head_dim):
    """Number of attention heads for width ``dim``: about ``dim / head_dim``, dividing ``dim``."""
    h = max(1, dim // head_dim)
    while dim % h:
        h -= 1
    return h


class HeadBlock(nn.Module):
    """One block of the unified framework; subclasses define the branches."""

    two_branch = True

    def __init__(self, shortcut: bool, drop_path: float):
        super().__init__()
        self.shortcut = bool(shortcut)
        self.drop_path = DropPath(drop_path)

    def mixer(self, x):
        """Token-mixer branch (or the whole branch of a one-branch block): (B, H, W, C) -> same."""
        raise NotImplementedError

    def channel_mlp(self, x):
        """Channel-MLP branch of a two-branch block: (B, H, W, C) -> same."""
        raise NotImplementedError

    def execute(self, x):
        y = self.mixer(x)
        x = x + self.drop_path(y) if self.shortcut else y
        if self.two_branch:
            x = x + self.drop_path(self.channel_mlp(x))
        return x


CONVNEXT_STRUCTURES = ("full", "token_mixer", "mlp")


class ConvNextHeadBlock(HeadBlock):
    """The authors' ConvNext block; ``structure`` is paper Table XV's ablation: ``full`` (token mixer
    = 7x7 depthwise conv, then the MLP = LayerNorm, Linear 4x, GELU, Linear), ``token_mixer`` (the
    depthwise conv only) or ``mlp`` (the MLP only). Each variant is the block's one branch, with the
    block's shortcut; the parts a variant drops are not built (no unused parameters)."""
    two_branch = False

    def __init__(self, dim, shortcut, drop_path, kernel_size=7, structure="full"):
        super().__init__(shortcut, drop_path)
        if structure not in CONVNEXT_STRUCTURES:
            raise ValueError(f"unknown ConvNext head structure {structure!r}; known: {', '.join(CONVNEXT_STRUCTURES)}")
        self.structure = structure
        if structure != "mlp":
            self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        if structure != "token_mixer":
            self.norm = LayerNorm(dim, eps=1e-5)
            self.pwconv1 = nn.Linear(dim, 4 * dim)
            self.pwconv2 = nn.Linear(4 * dim, dim)

    def mixer(self, x):
        if self.structure != "mlp":
            x = depthwise.depthwise_conv_nhwc(x, self.dwconv)  # fused CPU kernel; = _nhwc(self.dwconv(_nchw(x)))
        if self.structure == "token_mixer":
            return x
        return self.pwconv2(linear_gelu(self.pwconv1, self.norm(x)))


class ResNetHeadBlock(HeadBlock):
    two_branch = False

    def __init__(self, dim, shortcut, drop_path):
        super().__init__(shortcut, drop_path)
        if dim < 4:
            raise ValueError(f"the resnet head needs dim >= 4 (bottleneck width dim/4), got {dim}")
        width = dim // 4
        self.conv1 = nn.Conv2d(dim, width, 1, bias=False)
        self.bn1 = BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, dim, 1, bias=False)
        self.bn3 = BatchNorm2d(dim)
        for conv in (self.conv1, self.conv2, self.conv3):
            fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
            conv.weight.assign(jt.randn(conv.weight.shape) * math.sqrt(2.0 / fan_out))

    def mixer(self, x):
        y = nn.relu(self.bn1(self.conv1(_nchw(x))))
        y = nn.relu(self.bn2(self.conv2(y)))
        return _nhwc(self.bn3(self.conv3(y)))


class ResMLPHeadBlock(HeadBlock):
    def __init__(self, dim, shortcut, drop_path, max_grid=14, layer_scale_init=0.1, mlp_ratio=4.0):
        super().__init__(shortcut, drop_path)
        self.norm1 = Affine(dim)
        self.linear_tokens = CrossPatchLinear(to_2tuple(max_grid))
        self.linear_tokens.weight.assign(jt.init.trunc_normal_(jt.zeros(self.linear_tokens.weight.shape), std=0.02))
        self.linear_tokens.bias.assign(jt.zeros(self.linear_tokens.bias.shape))
        self.norm2 = Affine(dim)
        self.mlp_channels = ChannelMlp(dim, int(dim * mlp_ratio))
        self.ls1 = jt.full((dim,), float(layer_scale_init))
        self.ls2 = jt.full((dim,), float(layer_scale_init))

    def mixer(self, x):
        B, H, W, C = x.shape
        y = self.linear_tokens(self.norm1(x).reshape(B, H * W, C), (H, W))
        return self.ls1 * y.reshape(B, H, W, C)

    def channel_mlp(self, x):
        return self.ls2 * self.mlp_channels(self.norm2(x))


class GroupNorm1(nn.Module):
    """GroupNorm with one group on channels-last maps: statistics over (H, W, C) per sample."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = jt.ones((dim,))
        self.bias = jt.zeros((dim,))

    def execute(self, x):
        mean = x.mean(dims=[1, 2, 3], keepdims=True)
        xc = x - mean
        var = (xc * xc).mean(dims=[1, 2, 3], keepdims=True)
        return xc / jt.sqrt(var + self.eps) * self.weight + self.bias


class LayerScale(nn.Module):
    def __init__(self, dim, init_value):
        super().__init__()
        self.scale = jt.full((dim,), float(init_value))

    def execute(self, x):
        return x * self.scale


def avg_pool_same(x, k):
    """k x k stride-1 average pool on (B, H, W, C), border tokens averaging only real neighbours.

    PoolFormer's ``count_include_pad=False`` pooling, written as a sum of shifted copies because
    ``jittor.nn.Pool`` refuses maps not larger than the kernel (the 1x1..3x3 maps hierarchical
    bases give on small crops).
    """
    B, H, W, C = x.shape
    p = k // 2
    xp = nn.pad(x, (0, 0, p, p, p, p))
    total = None
    for dy in range(k):
        for dx in range(k):
            part = xp[:, dy:dy + H, dx:dx + W, :]
            total = part if total is None else total + part
    ones = np.pad(np.ones((H, W), np.float32), p)
    count = sum(ones[dy:dy + H, dx:dx + W] for dy in range(k) for dx in range(k))
    return total / jt.array(count.reshape(1, H, W, 1))


class PoolFormerHeadBlock(HeadBlock):
    def __init__(self, dim, shortcut, drop_path, pool_size=3, layer_scale_init=0.1, mlp_ratio=4.0):
        super().__init__(shortcut, drop_path)
        self.norm1 = GroupNorm1(dim)
        if pool_size % 2 != 1:
            raise ValueError(f"pool_size must be odd, got {pool_size}")
        self.pool_size = int(pool_size)
        self.layer_scale1 = LayerScale(dim, layer_scale_init)
        self.norm2 = GroupNorm1(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale2 = LayerScale(dim, layer_scale_init)

    def mixer(self, x):
        y = self.norm1(x)
        # pool(y) - y: the paper's mixer; subtracting y cancels the identity the shortcut already adds.
        return self.layer_scale1(avg_pool_same(y, self.pool_size) - y)

    def channel_mlp(self, x):
        return self.layer_scale2(self.mlp(self.norm2(x)))


class ViTHeadBlock(HeadBlock):
    def __init__(self, dim, shortcut, drop_path, num_heads=None, mlp_ratio=4.0):
        super().__init__(shortcut, drop_path)
        num_heads = num_heads or _default_heads(dim, 64)
        self.norm1 = LayerNorm(dim, eps=HEAD_LN_EPS)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = LayerNorm(dim, eps=HEAD_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def mixer(self, x):
        B, H, W, C = x.shape
        return self.attn(self.norm1(x).reshape(B, H * W, C)).reshape(B, H, W, C)

    def channel_mlp(self, x):
        return self.mlp(self.norm2(x))


_PAD_MASK_CACHE = {}


def _pad_key_mask(H, W, window, shift):
    """(nW, N, N) additive mask hiding padded positions as keys, or None when nothing is padded."""
    wh, ww = window
    Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
    if (Hp, Wp) == (H, W):
        return None
    key = (H, W, window, shift)
    if key not in _PAD_MASK_CACHE:
        pad = np.zeros((Hp, Wp), np.float32)
        pad[H:, :] = 1.0
        pad[:, W:] = 1.0
        pad = np.roll(pad, (-shift[0], -shift[1]), axis=(0, 1))  # same cyclic shift as the tokens
        win = pad.reshape(Hp // wh, wh, Wp // ww, ww).transpose(0, 2, 1, 3).reshape(-1, 1, wh * ww)
        mask = np.broadcast_to(win * SHIFT_MASK_VALUE, (win.shape[0], wh * ww, wh * ww))
        _PAD_MASK_CACHE[key] = jt.array(np.ascontiguousarray(mask)).stop_grad()
    return _PAD_MASK_CACHE[key]


class SwinHeadBlock(HeadBlock):
    """Pre-norm window attention + MLP; shifted by half a window on odd blocks (``block_index``).

    Per axis, a grid no larger than ``window_size`` is one window and is not shifted (timm's rule,
    as :mod:`models.swin`; the smaller window reads the centre of the same bias table). Other grids
    are zero-padded at the bottom/right to a multiple of the window; unlike the Swin base, padded
    positions are also masked out as keys, so a head's output on a crop does not depend on padding.
    """

    def __init__(self, dim, shortcut, drop_path, block_index=0, num_heads=None, window_size=7, mlp_ratio=4.0):
        super().__init__(shortcut, drop_path)
        num_heads = num_heads or _default_heads(dim, 32)
        self.window_size = int(window_size)
        self.shift_size = self.window_size // 2 if block_index % 2 == 1 else 0
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias=True)
        self.norm2 = LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def mixer(self, x):
        B, H, W, C = x.shape
        wh, ww = min(H, self.window_size), min(W, self.window_size)
        sh = self.shift_size if H > self.window_size else 0
        sw = self.shift_size if W > self.window_size else 0
        Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
        y = self.norm1(x)
        if (Hp, Wp) != (H, W):
            y = nn.pad(y, (0, 0, 0, Wp - W, 0, Hp - H))
        if sh or sw:
            y = jt.roll(y, (-sh, -sw), (1, 2))
        mask = shift_window_mask(Hp, Wp, (wh, ww), (sh, sw))
        pad_mask = _pad_key_mask(H, W, (wh, ww), (sh, sw))
        if pad_mask is not None:
            mask = pad_mask if mask is None else mask + pad_mask
        y = self.attn(window_partition(y, (wh, ww)), mask=mask, window=(wh, ww))
        y = window_reverse(y, (wh, ww), Hp, Wp)
        if sh or sw:
            y = jt.roll(y, (sh, sw), (1, 2))
        return y[:, :H, :W, :] if (Hp, Wp) != (H, W) else y

    def channel_mlp(self, x):
        return self.mlp(self.norm2(x))


_BLOCKS = {
    "convnext": (ConvNextHeadBlock, ("kernel_size", "structure")),
    "resnet": (ResNetHeadBlock, ()),
    "resmlp": (ResMLPHeadBlock, ("max_grid", "layer_scale_init", "mlp_ratio")),
    "poolformer": (PoolFormerHeadBlock, ("pool_size", "layer_scale_init", "mlp_ratio")),
    "vit": (ViTHeadBlock, ("num_heads", "mlp_ratio")),
    "swin": (SwinHeadBlock, ("num_heads", "window_size", "mlp_ratio")),
}


def _check_tokens(tokens, grid, dim):
    if len(tuple(grid)) != 2:
        raise ValueError(f"grid must be (H, W), got {grid!r}")
    H, W = int(grid[0]), int(grid[1])
    if tokens.ndim != 3:
        raise ValueError(f"head expects tokens of shape (B, N, C), got {tuple(tokens.shape)}")
    B, N, C = tokens.shape
    if N != H * W:
        raise ValueError(f"got {N} tokens for a {H}x{W} grid (needs N == H * W)")
    if C != dim:
        raise ValueError(f"head built for {dim} channels got tokens with {C}")
    return H, W


class AuxHead(nn.Module):
    """``depth`` blocks of one architecture and a final LayerNorm ``norm``."""

    def __init__(self, arch: str, dim: int, depth: int = 3, first_shortcut: bool = False,
                 drop_path: Union[float, Sequence[float]] = 0.0, **kw):
        super().__init__()
        if arch not in _BLOCKS:
            raise ValueError(f"unknown auxiliary head '{arch}'; known heads: {', '.join(HEAD_ARCHS)}")
        if int(depth) < 1:
            raise ValueError(f"head depth must be >= 1, got {depth}")
        depth = int(depth)
        if isinstance(drop_path, (int, float)):
            dpr = [float(drop_path)] * depth
        else:
            dpr = [float(d) for d in drop_path]
            if len(dpr) != depth:
                raise ValueError(f"drop_path has {len(dpr)} rates for a depth-{depth} head")
        cls, allowed = _BLOCKS[arch]
        own = {k: v for k, v in kw.items() if k in allowed}
        self.arch = arch
        self.dim = self.out_dim = int(dim)
        self.depth = depth
        self.first_shortcut = bool(first_shortcut)
        blocks = []
        for i in range(depth):
            # Swin alternates plain and shifted windows, so its blocks need their position.
            extra = {"block_index": i} if arch == "swin" else {}
            blocks.append(cls(dim, shortcut=(i > 0 or self.first_shortcut), drop_path=dpr[i], **extra, **own))
        self.blocks = nn.ModuleList(blocks)
        self.norm = LayerNorm(dim, eps=HEAD_LN_EPS)
        _trunc_normal_linears(self)

    def forward_tokens(self, tokens, grid):
        """(B, N, C) tokens on ``grid`` -> (B, N, C) output tokens of the last block, before ``norm``."""
        H, W = _check_tokens(tokens, grid, self.dim)
        B, N, C = tokens.shape
        x = tokens.reshape(B, H, W, C)
        for blk in self.blocks:
            x = blk(x)
        return x.reshape(B, N, C)

    def execute(self, tokens, grid) -> Dict[str, jt.Var]:
        x = self.forward_tokens(tokens, grid)
        # As the authors' code: one LayerNorm over concat[mean token, patch tokens].
        out = self.norm(jt.concat([x.mean(dim=1, keepdims=True), x], dim=1))
        return {"cls": out[:, 0], "patch": out[:, 1:]}


class MultiAuxHead(nn.Module):
    """Several heads on the same tokens, outputs concatenated along channels in ``archs`` order (Eq. 9)."""

    def __init__(self, archs: Sequence[str], dim: int, depth: int = 3, first_shortcut: bool = False,
                 drop_path: Union[float, Sequence[float]] = 0.0, **kw):
        super().__init__()
        self.archs = tuple(archs)
        self.heads = nn.ModuleList([AuxHead(a, dim, depth, first_shortcut, drop_path, **kw) for a in self.archs])
        self.dim = int(dim)
        self.out_dim = sum(h.out_dim for h in self.heads)

    def execute(self, tokens, grid) -> Dict[str, jt.Var]:
        outs = [h(tokens, grid) for h in self.heads]
        return {"cls": jt.concat([o["cls"] for o in outs], dim=-1),
                "patch": jt.concat([o["patch"] for o in outs], dim=-1)}


def build_aux_head(archs: Union[str, Sequence[str]], dim: int, depth: int = 3, first_shortcut: bool = False,
                   drop_path: Union[float, Sequence[float]] = 0.0, **kw):
    """One name (or a one-element list) -> :class:`AuxHead`; several -> :class:`MultiAuxHead`.

    ``kw`` holds per-architecture options; each head takes those it knows: ``kernel_size``
    and ``structure`` (convnext), ``max_grid`` (resmlp), ``layer_scale_init``/``mlp_ratio`` (resmlp, poolformer),
    ``pool_size`` (poolformer), ``num_heads`` (vit, swin), ``window_size`` (swin).
    """
    names = [archs] if isinstance(archs, str) else list(archs)
    if not names:
        raise ValueError(f"no auxiliary head given; known heads: {', '.join(HEAD_ARCHS)}")
    unknown = [n for n in names if n not in _BLOCKS]
    if unknown:
        raise ValueError(f"unknown auxiliary head(s) {unknown}; known heads: {', '.join(HEAD_ARCHS)}")
    known_kw = set().union(*(allowed for _, allowed in _BLOCKS.values()))
    bad = sorted(set(kw) - known_kw)
    if bad:
        raise ValueError(f"unknown head option(s) {bad}; known options: {sorted(known_kw)}")
    if len(names) == 1:
        return AuxHead(names[0], dim, depth, first_shortcut, drop_path, **kw)
    return MultiAuxHead(names, dim, depth, first_shortcut, drop_path, **kw)


class ParallelAuxNet(nn.Module):
    """A whole network on the images as the "auxiliary" (paper Table XVII, parallel connection):
    ``net`` (e.g. ConvNeXt-T, timm keys under ``aux_head.net.*``) runs on the same crops as the base;
    its last-stage tokens and their mean go through one final LayerNorm ``norm``, as :class:`AuxHead`.
    ``takes_images``: the network passes it the crops instead of the base's tokens."""

    takes_images = True

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.dim = self.out_dim = int(net.num_features)
        self.norm = LayerNorm(self.out_dim, eps=HEAD_LN_EPS)

    def execute(self, images) -> Dict[str, jt.Var]:
        x = self.net.forward_features(images)["head_input"]
        out = self.norm(jt.concat([x.mean(dim=1, keepdims=True), x], dim=1))
        return {"cls": out[:, 0], "patch": out[:, 1:]}


class _TapStore:
    """Plain holder (not a Module, so the tapped Var is no parameter or state)."""
    tokens = None


class ShallowTap(nn.Module):
    """Deep-to-shallow (DTS, paper Table XIX): the "head" output is the base model's own block
    ``block`` (its tokens after that block, through a new LayerNorm ``norm``), so the teacher's last
    layer can supervise a shallow layer of the student. Captured with a forward hook on that block of
    ``backbone.blocks``; the backbone itself is not a submodule (its parameters stay the base's).
    The CLS output is the block's prefix token when the base has one (ViT), else the token mean."""

    def __init__(self, backbone, block):
        super().__init__()
        blocks = getattr(backbone, "blocks", None)
        if blocks is None:
            raise ValueError(f"deep-to-shallow needs a base with a list of blocks (ViT, ResMLP); "
                             f"{type(backbone).__name__} has none")
        if not 0 <= int(block) < len(blocks) - 1:
            raise ValueError(f"deep-to-shallow block {block} must lie in [0, {len(blocks) - 1}) "
                             f"(the base has {len(blocks)} blocks; the last one is the deep target)")
        self.block = int(block)
        self.prefix = int(getattr(backbone, "num_prefix_tokens", 0))
        self.dim = self.out_dim = int(backbone.num_features)
        self.norm = LayerNorm(self.dim, eps=HEAD_LN_EPS)
        self._store = _TapStore()
        store = self._store

        def keep(module, args, output, *rest):
            store.tokens = output
        blocks[self.block].register_forward_hook(keep)

    def execute(self, tokens, grid) -> Dict[str, jt.Var]:
        x = self._store.tokens
        if x is None:
            raise RuntimeError("deep-to-shallow: the base model has not run yet (no block output captured)")
        x = self.norm(x)
        patch = x[:, self.prefix:]
        cls = x[:, 0] if self.prefix else patch.mean(dim=1)
        return {"cls": cls, "patch": patch}


def auxiliary_for_connection(connection, backbone, drop_path=0.0, shallow_block=8):
    """The auxiliary of a non-serial connection: ``parallel`` -> :class:`ParallelAuxNet` with a whole
    ConvNeXt-T (Table XVII); ``deep_to_shallow`` -> :class:`ShallowTap` on ``backbone`` (Table XIX)."""
    if connection == "parallel":
        from .convnext import convnext_tiny
        return ParallelAuxNet(convnext_tiny(drop_path_rate=drop_path))
    if connection == "deep_to_shallow":
        return ShallowTap(backbone, shallow_block)
    raise ValueError(f"unknown auxiliary connection {connection!r}; known: serial, parallel, deep_to_shallow")


def run_auxiliary(aux, features, images=None):
    """The auxiliary's output for one base pass: ``features`` is the base's ``forward_features``
    dict; a parallel net (``takes_images``) reads ``images`` (or ``features["images"]``) instead."""
    if getattr(aux, "takes_images", False):
        return aux(features["images"] if images is None else images)
    return aux(features["head_input"], features["grid"])
