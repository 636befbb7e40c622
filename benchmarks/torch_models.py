"""PyTorch twins of jhssl's ViT, ConvNext auxiliary head, projection heads and iBOT/HSSL loss.

For benchmarking only (Jittor vs torch on the same model and loss); jhssl itself never imports
torch. Each piece computes what its jhssl counterpart computes (see the docstrings there):

* ViT: timm layout, pre-norm blocks, LayerNorm eps 1e-6, exact GELU, CLS token, learnable
  position embedding, iBOT mask token replacing masked patch embeddings before the position
  embedding; ``head_input`` = pre-norm patch tokens of the last block.
* ConvNext head (models/heads.py): ``depth`` blocks of 7x7 depthwise conv -> LayerNorm(1e-5) ->
  Linear 4x -> GELU -> Linear; the first block without its shortcut; final LayerNorm(1e-6) over
  concat[mean token, patch tokens].
* Projection (jhssl/methods/projection.py): Linear-GELU-Linear-GELU-Linear to the bottleneck, L2
  normalisation, weight-normalised prototype layer.
* SSLNetwork (jhssl/methods/network.py): crops of one size are batched; CLS logits of every crop,
  patch logits of the global crops; the head sees the base's ``head_input``.
* Loss (jhssl/methods/losses.py): cross-view CLS terms, same-view masked-patch terms (iBOT),
  HSSL: the teacher head's outputs supervise the student base and head (terms summed);
  centering with momentum 0.9.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * (C // self.heads) ** -0.5) @ k.transpose(-2, -1)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


VIT_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


class ViT(nn.Module):
    def __init__(self, arch="vit_small", patch_size=16, img_size=224, use_mask_token=False):
        super().__init__()
        dim, depth, heads = VIT_SIZES[arch]
        self.num_features = dim
        self.patch_size = patch_size
        self.grid0 = img_size // patch_size
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid0 ** 2 + 1, dim) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if use_mask_token else None
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def _pos(self, h, w):
        if (h, w) == (self.grid0, self.grid0):
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, self.grid0, self.grid0, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def forward_features(self, x, mask=None):
        t = self.patch_embed(x)
        B, C, h, w = t.shape
        t = t.flatten(2).transpose(1, 2)
        if mask is not None:
            m = mask.reshape(B, h * w, 1).to(t.dtype)
            t = t * (1 - m) + self.mask_token * m
        x = torch.cat([self.cls_token.expand(B, 1, C), t], dim=1) + self._pos(h, w)
        for blk in self.blocks:
            x = blk(x)
        normed = self.norm(x)
        return {"cls": normed[:, 0], "patch": normed[:, 1:], "head_input": x[:, 1:], "grid": (h, w)}


class ConvNextHeadBlock(nn.Module):
    def __init__(self, dim, shortcut):
        super().__init__()
        self.shortcut = shortcut
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x):  # (B, H, W, C)
        y = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + y if self.shortcut else y


class ConvNextAuxHead(nn.Module):
    def __init__(self, dim, depth=3, first_shortcut=False):
        super().__init__()
        self.out_dim = dim
        self.blocks = nn.ModuleList([ConvNextHeadBlock(dim, i > 0 or first_shortcut) for i in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, tokens, grid):
        B, N, C = tokens.shape
        x = tokens.reshape(B, grid[0], grid[1], C)
        for blk in self.blocks:
            x = blk(x)
        x = x.reshape(B, N, C)
        out = self.norm(torch.cat([x.mean(dim=1, keepdim=True), x], dim=1))
        return {"cls": out[:, 0], "patch": out[:, 1:]}


class WeightNormLinear(nn.Module):
    def __init__(self, in_dim, out_dim, fix_g=False):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim).uniform_(-bound, bound))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_g)

    def forward(self, x):
        w = self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))
        return x @ w.t()


class ProjectionMLP(nn.Module):
    def __init__(self, in_dim, hidden_dim=2048, bottleneck_dim=256, nlayers=3):
        super().__init__()
        layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
        for _ in range(nlayers - 2):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return F.normalize(self.mlp(x), dim=-1, eps=1e-12)


class SSLNetwork(nn.Module):
    """Base + optional ConvNext head + separate projections + shared prototypes per branch."""

    def __init__(self, backbone, aux_head, out_dim, hidden_dim, bottleneck_dim, nlayers, norm_last_layer):
        super().__init__()
        self.backbone, self.aux_head = backbone, aux_head
        self.head = ProjectionMLP(backbone.num_features, hidden_dim, bottleneck_dim, nlayers)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_g=norm_last_layer)
        if aux_head is not None:
            self.aux_proj = ProjectionMLP(aux_head.out_dim, hidden_dim, bottleneck_dim, nlayers)
            self.aux_last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_g=norm_last_layer)

    def project(self, x, which):
        if which == "head":
            return self.aux_last_layer(self.aux_proj(x))
        return self.last_layer(self.head(x))

    def forward(self, crops, masks, n_global, want, rows=None):
        """``rows``: None (every patch token projected, (R, N, K) outputs) or ``(index, weight)`` of
        the masked rows: patch outputs become (M, K) and ``*_patch_mean`` the mean logits over every
        token (as jhssl.methods.masked_rows does)."""
        groups, start = [], 0
        for i in range(1, len(crops) + 1):
            if i == len(crops) or crops[i].shape[-2:] != crops[start].shape[-2:] or i == n_global:
                groups.append((start, i))
                start = i
        acc = {k: [] for k in list(want) + ["base_tokens", "head_tokens"]}
        for a, b in groups:
            x = torch.cat(crops[a:b], dim=0)
            is_global = a < n_global
            mask = torch.cat(masks[a:b], dim=0) if (masks is not None and is_global) else None
            out = self.backbone.forward_features(x, mask)
            if "base_cls" in want:
                acc["base_cls"].append(self.project(out["cls"], "base"))
            if is_global and "base_patch" in want:
                acc["base_tokens"].append(out["patch"])
            if self.aux_head is not None and ({"head_cls", "head_patch"} & set(want)):
                h = self.aux_head(out["head_input"], out["grid"])
                if "head_cls" in want:
                    acc["head_cls"].append(self.project(h["cls"], "head"))
                if is_global and "head_patch" in want:
                    acc["head_tokens"].append(h["patch"])
        for which in ("base", "head"):
            tokens = acc.pop(which + "_tokens")
            if not tokens:
                continue
            x = torch.cat(tokens, dim=0)
            if rows is None:
                acc[which + "_patch"].append(self.project(x, which))
                continue
            mlp, last = (self.aux_proj, self.aux_last_layer) if which == "head" else (self.head, self.last_layer)
            x = x.reshape(-1, x.shape[-1])
            if which + "_patch_mean" in want:  # teacher: MLP on every token, prototypes on masked + mean rows
                z = mlp(x)
                acc[which + "_patch"].append(last(z[rows[0]]))
                acc[which + "_patch_mean"].append(last(z.mean(0, keepdim=True)))
            else:
                acc[which + "_patch"].append(last(mlp(x[rows[0]])))
        return {k: torch.cat(v, dim=0) for k, v in acc.items() if v}


def masked_rows(masks):
    """(index, weight) of the masked rows of the flattened global-crop tokens (iBOT's average)."""
    m = torch.cat([mk.reshape(mk.shape[0], -1) for mk in masks], dim=0).bool()
    counts = m.sum(1).clamp(min=1).double()
    per_image = 1.0 / (len(masks) * masks[0].shape[0] * counts)
    index = m.reshape(-1).nonzero().squeeze(1)
    return index, per_image[index // m.shape[1]].float()


def _ce(t, s):
    return -(t * F.log_softmax(s, dim=-1)).sum(dim=-1)


class SelfDistillationLoss(nn.Module):
    def __init__(self, out_dim, n_global, n_local, teacher_temp=0.04, patch_temp=0.04, student_temp=0.1,
                 center_momentum=0.9):
        super().__init__()
        self.n_global, self.n_crops = n_global, n_global + n_local
        self.tt, self.pt, self.st, self.m = teacher_temp, patch_temp, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center_patch", torch.zeros(1, 1, out_dim))

    def forward(self, student_cls, student_patch, teacher_cls, teacher_patch, masks, teacher_patch_mean=None):
        t_cls = F.softmax((teacher_cls - self.center) / self.tt, dim=-1).chunk(self.n_global)
        loss = 0.0
        for logits in student_cls.values():
            chunks = (logits / self.st).chunk(self.n_crops)
            total, n = 0.0, 0
            for q, t in enumerate(t_cls):
                for v, s in enumerate(chunks):
                    if v != q:
                        total, n = total + _ce(t, s).mean(), n + 1
            loss = loss + total / n
        if student_patch:
            if isinstance(masks, tuple):  # masked rows (index, weight): patch outputs are (M, K)
                t_patch = F.softmax((teacher_patch - self.center_patch.reshape(1, -1)) / self.pt, dim=-1)
                for logits in student_patch.values():
                    loss = loss + (_ce(t_patch, logits / self.st) * masks[1]).sum()
            else:
                t_patch = F.softmax((teacher_patch - self.center_patch) / self.pt, dim=-1).chunk(self.n_global)
                for logits in student_patch.values():
                    total = 0.0
                    for q, (t, s) in enumerate(zip(t_patch, (logits / self.st).chunk(self.n_global))):
                        m = masks[q].reshape(masks[q].shape[0], -1).float()
                        total = total + ((_ce(t, s) * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
                    loss = loss + total / self.n_global
        with torch.no_grad():
            self.center.mul_(self.m).add_(teacher_cls.mean(0, keepdim=True) * (1 - self.m))
            if teacher_patch_mean is not None:
                self.center_patch.mul_(self.m).add_(teacher_patch_mean.reshape(1, 1, -1) * (1 - self.m))
        return loss


class TorchHSSL:
    """Student/teacher iBOT (+ HSSL ConvNext head when ``hssl``), one training step per ``step``.

    ``masked_projection`` mirrors jhssl.perf.masked_projection: only the masked patch tokens are
    projected (the benchmark runs both frameworks with the same setting)."""

    def __init__(self, arch, patch_size, img_size, hssl, out_dim, hidden_dim, bottleneck_dim, nlayers,
                 n_local, head_depth=3, norm_last_layer=False, lr=5e-4, masked_projection=True):
        def net():
            vit = ViT(arch, patch_size, img_size, use_mask_token=True)
            head = ConvNextAuxHead(vit.num_features, head_depth) if hssl else None
            return SSLNetwork(vit, head, out_dim, hidden_dim, bottleneck_dim, nlayers, norm_last_layer)

        self.student, self.teacher = net(), net()
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.hssl = hssl
        self.masked_projection = masked_projection
        self.loss = SelfDistillationLoss(out_dim, 2, n_local)
        self.opt = torch.optim.AdamW([p for p in self.student.parameters() if p.requires_grad], lr=lr)

    def step(self, crops, masks, momentum=0.996):
        cls_t, patch_t = ("head_cls", "head_patch") if self.hssl else ("base_cls", "base_patch")
        branches = ["base", "head"] if self.hssl else ["base"]
        rows = masked_rows(masks) if self.masked_projection else None
        with torch.no_grad():
            t = self.teacher(crops[:2], None, 2, [cls_t, patch_t] + ([patch_t + "_mean"] if rows else []), rows)
        s = self.student(crops, masks, 2, [b + "_cls" for b in branches] + [b + "_patch" for b in branches], rows)
        if rows is None:
            p = t[patch_t]
            patch_mean = p.reshape(-1, p.shape[-1]).mean(0, keepdim=True)
        else:
            patch_mean = t[patch_t + "_mean"]
        loss = self.loss({b: s[b + "_cls"] for b in branches}, {b: s[b + "_patch"] for b in branches},
                         t[cls_t], t[patch_t], rows if rows is not None else masks, patch_mean)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
                pt.mul_(momentum).add_(ps.detach() * (1 - momentum))
        return loss
