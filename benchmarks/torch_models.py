"""PyTorch twins of jhssl's training steps: iBOT, MoCo v3 and MAE, each with or without HSSL.

For benchmarking only (Jittor vs torch on the same model and loss, and FLOPs counted by torch's
FlopCounterMode on the twin); jhssl itself never imports torch. Each piece computes what its jhssl
counterpart computes (see the docstrings there), with the same state-dict keys where the parity
tests (tests/test_torch_twins.py) copy weights across:

* ViT: timm keys and layout, pre-norm blocks, LayerNorm eps 1e-6, exact GELU, CLS token, learnable
  position embedding, iBOT mask token replacing masked patch embeddings before the position
  embedding; ``head_input`` = pre-norm patch tokens of the last block; ``forward_visible`` = MAE's
  encoder on the visible patches only.
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
* MoCo v3 (jhssl/methods/mocov3.py): :class:`TorchMoCoV3`, projector/predictor MLPs with BatchNorm,
  in-batch InfoNCE, the momentum network's head output as the key with HSSL (Eq. 11).
* MAE (jhssl/methods/mae.py): :class:`TorchMAE`, the MAE decoder, norm-pix loss; with HSSL the head on
  the re-laid grid, its pixel decoder, the base's feature decoder and the unmasked target pass.

``TorchMoCoV3.from_config`` / ``TorchMAE.from_config`` read the sizes from the same jhssl config the
Jittor method is built from.
"""
import functools
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


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


VIT_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, x):
        """(B, 3, H, W) -> (B, h * w, C) patch tokens in raster order, (h, w)."""
        t = self.proj(x)
        return t.flatten(2).transpose(1, 2), tuple(t.shape[-2:])


class ViT(nn.Module):
    def __init__(self, arch="vit_small", patch_size=16, img_size=224, use_mask_token=False):
        super().__init__()
        dim, depth, heads = VIT_SIZES[arch]
        self.num_features = dim
        self.patch_size = patch_size
        self.grid0 = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, dim)
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
        t, (h, w) = self.patch_embed(x)
        B, _, C = t.shape
        if mask is not None:
            m = mask.reshape(B, h * w, 1).to(t.dtype)
            t = t * (1 - m) + self.mask_token * m
        x = torch.cat([self.cls_token.expand(B, 1, C), t], dim=1) + self._pos(h, w)
        return self._encode(x, (h, w))

    def forward_visible(self, x, ids_keep):
        """MAE's encoder: position embeddings added, then only the patches ``ids_keep`` (B, K) kept;
        ``patch`` / ``head_input`` hold the (B, K, C) visible tokens."""
        t, (h, w) = self.patch_embed(x)
        B, _, C = t.shape
        pos = self._pos(h, w)
        visible = gather_tokens(t + pos[:, 1:], ids_keep)
        x = torch.cat([(self.cls_token + pos[:, :1]).expand(B, 1, C), visible], dim=1)
        return self._encode(x, (h, w))

    def _encode(self, x, grid):
        for blk in self.blocks:
            x = blk(x)
        normed = self.norm(x)
        return {"cls": normed[:, 0], "patch": normed[:, 1:], "head_input": x[:, 1:], "grid": grid}


def gather_tokens(x, ids):
    """Rows ``ids`` (B, K) of each image's tokens x (B, N, C) -> (B, K, C)."""
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


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
        acc = {k: [] for k in list(want) + ["base_tokens", "head_tokens", "base_cls_tokens", "head_cls_tokens"]}
        for a, b in groups:
            x = torch.cat(crops[a:b], dim=0)
            is_global = a < n_global
            mask = torch.cat(masks[a:b], dim=0) if (masks is not None and is_global) else None
            out = self.backbone.forward_features(x, mask)
            if "base_cls" in want:
                acc["base_cls_tokens"].append(out["cls"])
            if is_global and "base_patch" in want:
                acc["base_tokens"].append(out["patch"])
            if self.aux_head is not None and ({"head_cls", "head_patch"} & set(want)):
                h = self.aux_head(out["head_input"], out["grid"])
                if "head_cls" in want:
                    acc["head_cls_tokens"].append(h["cls"])
                if is_global and "head_patch" in want:
                    acc["head_tokens"].append(h["patch"])
        for which in ("base", "head"):  # the CLS tokens of every crop in one projection, as jhssl
            cls_tokens = acc.pop(which + "_cls_tokens")
            if cls_tokens:
                acc[which + "_cls"].append(self.project(torch.cat(cls_tokens, dim=0), which))
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


# ============================================================================ MoCo v3 and MAE
def _twin_setting(cfg):
    """The base/head arguments of a twin from a jhssl config, or a ValueError naming what the twins
    do not model (they have the ViTs and the serial ConvNext head only, and no drop path)."""
    m, h = cfg.model, cfg.hssl
    problems = []
    if m.arch not in VIT_SIZES:
        problems.append(f"model.arch={m.arch} (twins: {', '.join(VIT_SIZES)})")
    if m.drop_path_rate:
        problems.append(f"model.drop_path_rate={m.drop_path_rate} (twins have no drop path)")
    if h is not None:
        if list(h.heads) != ["convnext"] or h.connection != "serial" or h.head_structure != "full":
            problems.append(f"hssl.heads={list(h.heads)} connection={h.connection} structure={h.head_structure} "
                            "(twins: one serial full ConvNext head)")
        if h.drop_path_rate:
            problems.append(f"hssl.drop_path_rate={h.drop_path_rate} (twins have no drop path)")
    if problems:
        raise ValueError("no torch twin for " + "; ".join(problems))
    return dict(arch=m.arch, patch_size=m.patch_size, img_size=m.img_size or cfg.data.global_crop_size,
                hssl=h is not None, head_depth=h.depth if h is not None else 0,
                first_shortcut=bool(h.first_shortcut) if h is not None else False)


def _trained(module):
    return [p for p in module.parameters() if p.requires_grad]


def _optimizer(module):
    # benchmarks/run.py's lr and weight decay for Jittor; decayed on every parameter, where Jittor's MAE
    # and iBOT exempt norms and biases: AdamW's update costs the same either way (timing only)
    return torch.optim.AdamW(_trained(module), lr=5e-4, weight_decay=0.04)


class MoCoMLP(nn.Module):
    """jhssl.methods.mocov3.MoCoMLP: bias-free Linear layers, BatchNorm + ReLU between them, a
    BatchNorm without affine after the last (keys ``mlp.<i>``)."""

    def __init__(self, num_layers, in_dim, hidden_dim, out_dim):
        super().__init__()
        layers = []
        for i in range(num_layers):
            last = i == num_layers - 1
            d_out = out_dim if last else hidden_dim
            layers.append(nn.Linear(in_dim if i == 0 else hidden_dim, d_out, bias=False))
            layers += [nn.BatchNorm1d(d_out, affine=False)] if last else [nn.BatchNorm1d(d_out), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(x)


class MoCoNetwork(nn.Module):
    """jhssl.methods.mocov3.MoCoNetwork: base, optional ConvNext head, a projector per branch and
    (online network only) a predictor per branch; the same keys."""

    def __init__(self, backbone, aux_head, proj_hidden_dim, proj_dim, pred_hidden_dim, predictor):
        super().__init__()
        self.backbone, self.aux_head = backbone, aux_head
        self.projector = MoCoMLP(3, backbone.num_features, proj_hidden_dim, proj_dim)
        self.predictor = MoCoMLP(2, proj_dim, pred_hidden_dim, proj_dim) if predictor else None
        if aux_head is not None:
            self.aux_projector = MoCoMLP(3, aux_head.out_dim, proj_hidden_dim, proj_dim)
            self.aux_predictor = MoCoMLP(2, proj_dim, pred_hidden_dim, proj_dim) if predictor else None

    def forward(self, x, want):
        out = self.backbone.forward_features(x)
        feats = {"base": out["cls"]}
        if self.aux_head is not None:
            feats["head"] = self.aux_head(out["head_input"], out["grid"])["cls"]
        result = {}
        for which in want:
            prefix = "aux_" if which == "head" else ""
            z = getattr(self, prefix + "projector")(feats[which])
            predictor = getattr(self, prefix + "predictor")
            result[which] = z if predictor is None else predictor(z)
        return result


def info_nce(q, k, temperature):
    """MoCo v3's in-batch contrastive loss: 2 tau * CE(q_n k_n^T / tau, diagonal)."""
    logits = F.normalize(q, dim=-1, eps=1e-12) @ F.normalize(k, dim=-1, eps=1e-12).t() / temperature
    return F.cross_entropy(logits, torch.arange(q.shape[0])) * (2.0 * temperature)


class TorchMoCoV3:
    """Online + momentum network of MoCo v3 (+ HSSL, Eq. 11), one training step per ``step``: keys of
    both views from the momentum network without gradient (its head output with HSSL, batch
    statistics), queries of both views from the online network, symmetrised InfoNCE with in-batch
    negatives, AdamW, EMA. The patch embedding is frozen (no gradient) when the config freezes it."""

    def __init__(self, arch, patch_size, img_size, hssl, head_depth, first_shortcut, proj_hidden_dim, proj_dim,
                 pred_hidden_dim, temperature, freeze_patch_embed, momentum=0.99):
        def net(predictor):
            vit = ViT(arch, patch_size, img_size)
            head = ConvNextAuxHead(vit.num_features, head_depth, first_shortcut) if hssl else None
            return MoCoNetwork(vit, head, proj_hidden_dim, proj_dim, pred_hidden_dim, predictor)

        self.student, self.teacher = net(predictor=True), net(predictor=False)
        shared = self.teacher.state_dict().keys()  # all but the online network's predictors
        self.teacher.load_state_dict({k: v for k, v in self.student.state_dict().items() if k in shared})
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if freeze_patch_embed:
            for p in self.student.backbone.patch_embed.parameters():
                p.requires_grad_(False)
        self.query_branches = ["base", "head"] if hssl else ["base"]
        self.key_branch = "head" if hssl else "base"
        self.temperature, self.momentum = temperature, momentum
        self.opt = _optimizer(self.student)
        teacher_params = dict(self.teacher.named_parameters())
        self.ema_pairs = [(p, teacher_params[n]) for n, p in self.student.named_parameters()
                          if p.requires_grad and n in teacher_params]

    @classmethod
    def from_config(cls, cfg):
        mo = cfg.mocov3
        if mo.negatives != "batch":
            raise ValueError(f"the MoCo v3 twin has in-batch negatives only, got mocov3.negatives={mo.negatives}")
        return cls(**_twin_setting(cfg), proj_hidden_dim=mo.proj_hidden_dim, proj_dim=mo.proj_dim,
                   pred_hidden_dim=mo.pred_hidden_dim, temperature=mo.temperature,
                   freeze_patch_embed=mo.freeze_patch_embed, momentum=cfg.optim.momentum_teacher)

    def loss(self, crops):
        """``crops``: the two views (B, 3, H, W) -> the loss (a scalar with gradient)."""
        with torch.no_grad():
            keys = [self.teacher(x, [self.key_branch])[self.key_branch] for x in crops]
        outs = [self.student(x, self.query_branches) for x in crops]
        total = 0.0
        for b in self.query_branches:  # query of one view against the key of the other, both ways
            total = total + info_nce(outs[1][b], keys[0], self.temperature) + info_nce(outs[0][b], keys[1],
                                                                                       self.temperature)
        return total

    def step(self, crops, masks=None):
        loss = self.loss(crops)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            for ps, pt in self.ema_pairs:
                pt.mul_(self.momentum).add_(ps.detach() * (1 - self.momentum))
        return loss


@functools.lru_cache(maxsize=16)
def sincos_pos_embed(dim, grid, cls_token):
    """MAE's fixed 2-D sin-cos table (1, N [+ 1], dim), from the numpy function jhssl's models use."""
    from models.layers.pos_embed import sincos_2d_pos_embed
    return torch.from_numpy(sincos_2d_pos_embed(dim, grid[0], grid[1], cls_token=cls_token))[None]


def unshuffle(visible, fill, ids_restore):
    """(B, K, C) visible tokens + ``fill`` (1, 1, C) at the masked positions -> (B, N, C) in raster order."""
    B, K, C = visible.shape
    seq = torch.cat([visible, fill.expand(B, ids_restore.shape[1] - K, C)], dim=1)
    return gather_tokens(seq, ids_restore)


class MAEDecoder(nn.Module):
    """models.mae.MAEDecoder: embedding, own mask token, fixed sin-cos positions, ViT blocks, norm,
    prediction; the CLS row is dropped from the output. The same keys."""

    def __init__(self, in_dim, out_dim, embed_dim, depth, num_heads, use_mask_token=True):
        super().__init__()
        self.embed_dim = embed_dim
        self.embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.pred = nn.Linear(embed_dim, out_dim)

    def forward(self, tokens, grid, ids_restore=None):
        x = self.embed(tokens)
        patches = x[:, 1:] if ids_restore is None else unshuffle(x[:, 1:], self.mask_token, ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + sincos_pos_embed(self.embed_dim, grid, True)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, 1:]


def patchify(imgs, p):
    """(B, C, H, W) -> (B, h * w, p * p * C) rows in raster order (models.mae.patchify)."""
    B, C, H, W = imgs.shape
    return imgs.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, -1, p * p * C)


def masked_mse(pred, target, mask):
    """Per-patch MSE averaged over the masked patches (``mask`` (B, N) 0/1)."""
    return (((pred - target) ** 2).mean(dim=-1) * mask).sum() / mask.sum()


def masking_ids(mask):
    """(B, h, w) bool masks -> MAE's ``ids_keep`` (B, K), ``ids_restore`` (B, N) and the (B, N) 0/1
    mask (the stable argsort of the mask, as jhssl.methods.mae.masking_rows)."""
    m = mask.reshape(mask.shape[0], -1)
    ids_shuffle = torch.argsort(m.to(torch.int8), dim=1, stable=True)
    num_keep = int((~m[0]).sum())
    return ids_shuffle[:, :num_keep], torch.argsort(ids_shuffle, dim=1, stable=True), m.float()


class MAENetwork(nn.Module):
    """jhssl.methods.mae.MAENetwork (the same keys): base encoder and decoder, and with HSSL the
    ConvNext head, its mask token and its pixel decoder."""

    def __init__(self, backbone, patch_size, decoder_kw, aux_head=None):
        super().__init__()
        self.backbone, self.aux_head = backbone, aux_head
        pix_dim = patch_size ** 2 * 3
        with torch.no_grad():  # MAE's fixed sin-cos table
            backbone.pos_embed.copy_(sincos_pos_embed(backbone.num_features, (backbone.grid0,) * 2, True))
        backbone.pos_embed.requires_grad_(False)
        self.decoder = MAEDecoder(backbone.num_features, pix_dim if aux_head is None else aux_head.out_dim,
                                  **decoder_kw)
        if aux_head is not None:
            self.aux_mask_token = nn.Parameter(torch.zeros(1, 1, backbone.num_features))
            self.aux_decoder = MAEDecoder(aux_head.out_dim, pix_dim, use_mask_token=False, **decoder_kw)

    def head_grid(self, visible_tokens, ids_restore, mask, grid):
        """The encoder's visible tokens re-laid on the grid; masked positions = mask token + position."""
        x = unshuffle(visible_tokens, self.aux_mask_token, ids_restore)
        return x + sincos_pos_embed(x.shape[-1], grid, False) * mask[..., None]

    def forward(self, imgs, ids_keep, ids_restore, mask):
        enc = self.backbone.forward_visible(imgs, ids_keep)
        grid = enc["grid"]
        base_pred = self.decoder(torch.cat([enc["cls"][:, None], enc["patch"]], dim=1), grid, ids_restore)
        if self.aux_head is None:
            return {"pix_base": base_pred}
        h = self.aux_head(self.head_grid(enc["head_input"], ids_restore, mask, grid), grid)
        pix = self.aux_decoder(torch.cat([h["cls"][:, None], h["patch"]], dim=1), grid)
        with torch.no_grad():  # the head's representation of the unmasked image is the base's target
            full = self.backbone.forward_features(imgs)
            target = self.aux_head(full["head_input"], full["grid"])["patch"]
            target = F.layer_norm(target, target.shape[-1:], eps=1e-6)
        return {"pix_head": pix, "feat_base": base_pred, "target": target}


class TorchMAE:
    """MAE (+ HSSL) training step per ``step``: the forward above, the norm-pix pixel loss (and the
    feature loss with HSSL) on the masked patches, AdamW. No teacher."""

    def __init__(self, arch, patch_size, img_size, hssl, head_depth, first_shortcut, decoder_embed_dim,
                 decoder_depth, decoder_num_heads, norm_pix_loss=True):
        vit = ViT(arch, patch_size, img_size)
        head = ConvNextAuxHead(vit.num_features, head_depth, first_shortcut) if hssl else None
        decoder_kw = dict(embed_dim=decoder_embed_dim, depth=decoder_depth, num_heads=decoder_num_heads)
        self.net = MAENetwork(vit, patch_size, decoder_kw, head)
        self.patch_size, self.norm_pix_loss = patch_size, norm_pix_loss
        self.opt = _optimizer(self.net)

    @classmethod
    def from_config(cls, cfg):
        a = cfg.mae
        if a.fusion_layers:
            raise ValueError(f"the MAE twin has no MFF fusion, got mae.fusion_layers={list(a.fusion_layers)}")
        return cls(**_twin_setting(cfg), decoder_embed_dim=a.decoder_embed_dim, decoder_depth=a.decoder_depth,
                   decoder_num_heads=a.decoder_num_heads, norm_pix_loss=a.norm_pix_loss)

    def pixel_target(self, imgs):
        rows = patchify(imgs, self.patch_size)
        if not self.norm_pix_loss:
            return rows
        return (rows - rows.mean(-1, keepdim=True)) / (rows.var(-1, keepdim=True) + 1e-6).sqrt()  # unbiased var

    def loss(self, imgs, mask):
        """``imgs`` (B, 3, H, W), ``mask`` (B, h, w) bool (True: masked) -> the loss."""
        ids_keep, ids_restore, m = masking_ids(mask)
        out = self.net(imgs, ids_keep, ids_restore, m)
        if self.net.aux_head is None:
            return masked_mse(out["pix_base"], self.pixel_target(imgs), m)
        return masked_mse(out["pix_head"], self.pixel_target(imgs), m) + masked_mse(out["feat_base"], out["target"], m)

    def step(self, crops, masks):
        """One view and its mask, as the benchmark hands every method its crops and masks."""
        loss = self.loss(crops[0], masks[0])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss
