"""Student/teacher network: base model (+ auxiliary head) + projection heads, run on multi-crop input."""
from jhssl import bootstrap  # noqa: F401

import jittor as jt
from jittor import nn

from models.heads import run_auxiliary

from .projection import ProjectionMLP, WeightNormLinear


class SSLNetwork(nn.Module):
    """Base model, optional HSSL auxiliary head, and their projections.

    State-dict layout (both student and teacher, so the EMA pairs parameters by name):
      ``backbone.*``          the base model (timm keys);
      ``aux_head.*``          the auxiliary head (absent for the baseline);
      ``head.mlp.*``          projection MLP of the base model (DINOHead layout);
      ``aux_proj.mlp.*``      projection MLP of the auxiliary head (absent when shared, Table XVI);
      ``last_layer.weight_{g,v}``       prototypes of the CLS token (shared with the patch tokens
                                        when ``shared_head``, iBOT's default in its recipes);
      ``last_layer_patch.weight_{g,v}`` prototypes of the patch tokens when not ``shared_head``;
      ``aux_last_layer*``     separate prototypes of the head (absent when shared; the authors'
                              code shares them).
    """

    def __init__(self, backbone, aux_head=None, *, out_dim, patch_out_dim, hidden_dim, bottleneck_dim,
                 nlayers, norm_last_layer, shared_head, use_patch, share_projection=False,
                 share_last_layer=True, use_bn=False, act="gelu"):
        super().__init__()
        self.backbone = backbone
        self.aux_head = aux_head
        self.use_patch = bool(use_patch)
        self.shared_head = bool(shared_head)
        self.share_projection = bool(share_projection)
        self.share_last_layer = bool(share_last_layer)
        dim = backbone.num_features
        self.head = ProjectionMLP(dim, hidden_dim, bottleneck_dim, nlayers, use_bn, act)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_g=norm_last_layer)
        if self.use_patch and not self.shared_head:
            self.last_layer_patch = WeightNormLinear(bottleneck_dim, patch_out_dim, fix_g=norm_last_layer)
        if aux_head is not None:
            if self.share_projection:
                if aux_head.out_dim != dim:
                    raise ValueError(f"hssl.share_projection needs the auxiliary head's out_dim "
                                     f"({aux_head.out_dim}) to equal the base model's ({dim})")
            else:
                self.aux_proj = ProjectionMLP(aux_head.out_dim, hidden_dim, bottleneck_dim, nlayers, use_bn, act)
            if not self.share_last_layer:
                self.aux_last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_g=norm_last_layer)
                if self.use_patch and not self.shared_head:
                    self.aux_last_layer_patch = WeightNormLinear(bottleneck_dim, patch_out_dim,
                                                                 fix_g=norm_last_layer)

    # -- projection pieces -------------------------------------------------------------------
    def _mlp(self, which):
        if which == "head" and not self.share_projection:
            return self.aux_proj
        return self.head

    def _prototypes(self, which, tokens):
        aux = which == "head" and not self.share_last_layer
        if tokens == "patch" and not self.shared_head:
            return self.aux_last_layer_patch if aux else self.last_layer_patch
        return self.aux_last_layer if aux else self.last_layer

    def project(self, feats, which, tokens):
        return self._prototypes(which, tokens)(self._mlp(which)(feats))

    # -- forward -----------------------------------------------------------------------------
    def execute(self, crops, masks=None, n_global=None, want=("base_cls", "base_patch", "head_cls", "head_patch"),
                patch_rows=None):
        """Run the crops (a list of (B, 3, H, W) Vars; crops of equal size are batched together).

        ``masks`` (list, one per global crop) go to the base model of the first ``n_global`` crops.
        Returns a dict with the requested keys among
          ``base_cls`` / ``head_cls``: (n_crops * B, K) projected CLS logits, crop-major;
          ``base_patch`` / ``head_patch``: (n_global * B, N, Kp) projected patch logits (global crops),
              or (M, Kp) for the masked rows only when ``patch_rows`` (a
              :class:`jhssl.methods.masked_rows.MaskedRows`) is given;
          ``base_patch_mean`` / ``head_patch_mean``: (1, Kp) mean patch logits over every global-crop
              token (the teacher's center input), computed without projecting every token;
          ``base_feat`` / ``head_feat``: (n_crops * B, C) the base's / head's CLS features (unprojected).
        """
        want = set(want)
        acc = new_outputs()
        for is_global, out in backbone_passes(self.backbone, crops, masks, n_global):
            self.collect(out, is_global, want, acc)
        return self.finish(acc, want, patch_rows)

    def collect(self, out, is_global, want, acc):
        """Add this network's requested outputs of one backbone pass (``out``) to ``acc``.

        Tokens are kept and projected by :meth:`finish` once all passes are in: the CLS tokens of
        every crop in one call, as DINO's MultiCropWrapper runs its head once on the concatenated
        outputs (one GEMM per layer reads each weight once), and the global-crop patch tokens
        together (the masked rows index all global crops)."""
        if "base_feat" in want:
            acc["base_feat"].append(out["cls"])
        if "base_cls" in want:
            acc["base_cls_tokens"].append(out["cls"])
        if is_global and want & {"base_patch", "base_patch_mean"}:
            acc["base_patch_tokens"].append(out["patch"])
        if self.aux_head is not None and want & {"head_cls", "head_patch", "head_patch_mean", "head_feat"}:
            h = run_auxiliary(self.aux_head, out)  # serial head, or a parallel net on out["images"]
            if "head_feat" in want:
                acc["head_feat"].append(h["cls"])
            if "head_cls" in want:
                acc["head_cls_tokens"].append(h["cls"])
            if is_global and want & {"head_patch", "head_patch_mean"}:
                acc["head_patch_tokens"].append(h["patch"])

    def finish(self, acc, want, patch_rows=None):
        """Project the collected tokens and concatenate every output over the passes."""
        for which in ("base", "head"):
            cls_tokens = acc.pop(which + "_cls_tokens")
            if cls_tokens:
                acc[which + "_cls"].append(self.project(_concat(cls_tokens), which, "cls"))
            tokens = acc.pop(which + "_patch_tokens")
            if not tokens:
                continue
            x = _concat(tokens)  # (n_global * B, N, C)
            mlp, prototypes = self._mlp(which), self._prototypes(which, "patch")
            mean_wanted = which + "_patch_mean" in want
            if patch_rows is None:
                logits = prototypes(mlp(x))
                if which + "_patch" in want:
                    acc[which + "_patch"].append(logits)
                if mean_wanted:
                    acc[which + "_patch_mean"].append(logits.reshape((-1, logits.shape[-1])).mean(0, keepdims=True))
                continue
            patch_rows.check_tokens(x)
            if mean_wanted or mlp.batch_dependent:
                # Every token through the MLP: the mean row needs them all, and with BatchNorm the
                # MLP's output depends on the whole batch. The prototype layer is linear, so the mean
                # of the logits is the prototypes of the mean row.
                z = mlp(x)
                z = z.reshape((-1, z.shape[-1]))
                if mean_wanted:
                    acc[which + "_patch_mean"].append(prototypes(z.mean(0, keepdims=True)))
                if which + "_patch" in want:
                    acc[which + "_patch"].append(prototypes(patch_rows.take(z)))
            elif which + "_patch" in want:
                acc[which + "_patch"].append(prototypes(mlp(patch_rows.take(x))))
        return finish_outputs(acc)


_OUTPUT_KEYS = ("base_cls", "base_cls_tokens", "base_feat", "base_patch", "base_patch_mean", "base_patch_tokens",
                "head_cls", "head_cls_tokens", "head_feat", "head_patch", "head_patch_mean", "head_patch_tokens")


def new_outputs():
    return {k: [] for k in _OUTPUT_KEYS}


def _concat(vs):
    return jt.concat(vs, dim=0) if len(vs) > 1 else vs[0]


def finish_outputs(acc):
    """Concatenate each requested output over the backbone passes (crop-major)."""
    return {k: _concat(v) for k, v in acc.items() if v}


def backbone_passes(backbone, crops, masks=None, n_global=None):
    """Yield ``(is_global, forward_features output)`` per group of consecutive equal-size crops.

    Crops of one resolution form one forward pass (DINO's MultiCropWrapper); the global crops
    (the first ``n_global``) are never grouped with local ones, and only they get ``masks``.
    """
    if not isinstance(crops, (list, tuple)):
        crops = [crops]
    n_global = len(crops) if n_global is None else int(n_global)
    start = 0
    for i in range(1, len(crops) + 1):
        if i == len(crops) or tuple(crops[i].shape[-2:]) != tuple(crops[start].shape[-2:]) or i == n_global:
            a, b = start, i
            start = i
            x = _concat(list(crops[a:b]))
            is_global = a < n_global
            if masks is not None and is_global:
                mask = _concat(list(masks[a:b]))
                out = backbone.forward_features(x, mask=mask)
            else:
                out = backbone.forward_features(x)
            yield is_global, dict(out, images=x)  # the crops too: a parallel auxiliary net reads them
