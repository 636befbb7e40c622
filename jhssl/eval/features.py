"""Frozen features for the linear probe, as DINO's ``eval_linear.py`` builds them.

* ViT base: the CLS tokens of the last ``n_last_blocks`` blocks (each through the final norm)
  concatenated; with ``avgpool_patchtokens`` the mean of the last block's normed patch tokens is
  appended. DINO's defaults: ViT-S 4 blocks, no pooling; ViT-B 1 block + pooled patch tokens.
  (DINO interleaves CLS and pooled features element-wise; we concatenate: a linear layer on top is
  the same function up to a permutation of its weights.)
* Other bases (Swin, ResNet, ...): the base model's pooled feature (no CLS token to stack).
* ``features='head'``: the auxiliary head's feature, as for k-NN.
"""
from __future__ import annotations

import jhssl  # noqa: F401

__all__ = ["default_layout", "linear_feature_fn"]


def default_layout(backbone) -> tuple[int, bool]:
    """DINO's rule by architecture: ViT-S-like (width < 768) -> (4, False); wider -> (1, True).
    (Capped at the model's depth, for tiny test models.)"""
    if getattr(backbone, "embed_dim", 0) < 768:
        return min(4, len(getattr(backbone, "blocks", [0] * 4))), False
    return 1, True


def linear_feature_fn(network, features: str = "base", n_last_blocks=None, avgpool=None):
    """(``fn(images) -> (B, D)`` Var, description dict) for a network of :func:`load_eval_network`."""
    import jittor as jt
    from jhssl.knn import feature_fn
    backbone = network.backbone
    if features == "head" or not hasattr(backbone, "get_intermediate_layers"):
        if features == "base" and (n_last_blocks not in (None, 1) or avgpool):
            raise ValueError(f"n_last_blocks/avgpool_patchtokens need a ViT base; {type(backbone).__name__} "
                             f"has no CLS token per block (leave them null)")
        return feature_fn(network, features), {"features": features, "layout": "pooled"}
    dn, da = default_layout(backbone)
    n = int(n_last_blocks if n_last_blocks is not None else dn)
    pool = bool(da if avgpool is None else avgpool)
    if not 1 <= n <= len(backbone.blocks):
        raise ValueError(f"n_last_blocks={n}: the base model has {len(backbone.blocks)} blocks")

    def fn(x):
        outs = backbone.get_intermediate_layers(x, n)
        parts = [o[:, 0] for o in outs]
        if pool:
            parts.append(outs[-1][:, 1:].mean(dim=1))
        return jt.concat(parts, dim=-1)
    return fn, {"features": features, "layout": "vit", "n_last_blocks": n, "avgpool_patchtokens": pool}
