"""The method registry: what each self-supervised method declares, keyed by ``method:`` in the config.

This module imports neither jittor nor the method implementations, so the config parser, the data
builder and the entry points can ask a method's declarations before anything is built. A method is
one :class:`MethodSpec` entry here plus one implementation file (``jhssl/methods/<name>.py``) whose
``build(cfg)`` returns an object with the interface of :class:`jhssl.methods.base.Method`.

Adding a method: write ``jhssl/methods/<name>.py`` (subclass ``Method``, define ``build(cfg)``), add
its ``MethodSpec`` to ``SPECS`` below, and its own config section (if any) to ``jhssl.config.SCHEMA``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

__all__ = ["Views", "MethodSpec", "SPECS", "method_spec", "method_names", "build_method", "foreign_keys",
           "config_problem"]


@dataclass(frozen=True)
class Views:
    """The inputs a method takes per image; the data builder reads this instead of method names.

    ``n_global``: global views (DINO/iBOT/MoCo v3: 2; MAE: 1). ``local_crops``: whether
    ``data.local_crops_number`` small crops are added (multi-crop). ``masks``: the mask generator
    the data loader draws per global view: ``"block"`` (iBOT's blockwise masks, ``mask.*`` keys)
    ``"random"`` (MAE's per-image random shuffle with an exact masked count, ``mae.mask_ratio``;
    drawn by the loader from each sample's seeded generator, so ranks and resumed runs agree),
    or None (no masks). ``augment``: ``"multicrop"`` (DINO's colour/blur/solarize views) or
    ``"crop_flip"`` (MAE: RandomResizedCrop + flip only).
    """
    n_global: int = 2
    local_crops: bool = True
    masks: Optional[str] = None
    augment: str = "multicrop"


# Config keys of the self-distillation family (DINO and iBOT). DINO's recipes inherit iBOT's
# (configs/dino_*.yaml have ``_base_: ibot_*``), so DINO accepts the patch keys and ignores them.
_SELF_DISTILLATION_KEYS = frozenset({
    "loss", "mask",
    "model.out_dim", "model.patch_out_dim", "model.norm_last_layer", "model.shared_last_layer",
    "model.shared_last_layer_teacher", "model.head_hidden_dim", "model.head_bottleneck_dim",
    "model.head_nlayers", "model.use_bn_in_head", "model.act_in_head",
    "optim.freeze_last_layer",
    "hssl.patch_level", "hssl.separate_proj", "hssl.shared_prototypes",
    "data.local_crops_number", "data.local_crops_scale", "data.local_crop_size",
})


@dataclass(frozen=True)
class MethodSpec:
    """What a method declares (data, teacher, config, search), readable without building it.

    ``module``: the implementation file, imported by :func:`build_method`.
    ``ema_teacher``: an EMA (momentum) copy of the student exists; its momentum follows
    ``optim.momentum_teacher`` -> 1 on a per-iteration cosine (DINO, iBOT, MoCo v3 alike).
    ``mask_token``: the base model needs a learnable mask token (iBOT's masked image modelling).
    ``keys``: the method-specific config keys (dotted keys or whole sections) this method reads.
    A key that another method owns and this one does not, set to a non-default value, is a
    config error naming the key and the method (:func:`foreign_keys`).
    ``search``: None when ``run/search.py`` works with the method, else why it does not.
    ``check_config``: ``check_config(cfg)`` -> the one-line problem with the method's own config
    section, or None; :mod:`jhssl.config` calls it (:func:`config_problem`) after the schema checks,
    before anything is built. It must not import jittor (parsing a config never does).
    """
    name: str
    module: str
    views: Views = field(default_factory=Views)
    ema_teacher: bool = True
    mask_token: bool = False
    keys: FrozenSet[str] = frozenset()
    search: Optional[str] = None
    summary: str = ""
    check_config: Optional[Callable[[Any], Optional[str]]] = None


def _mocov3_config_problem(cfg) -> Optional[str]:
    """The key queue (``mocov3.negatives`` with ``queue``) takes whole global batches of keys."""
    mo = cfg.mocov3
    if "queue" in mo.negatives:
        if mo.queue_size <= 0 or mo.queue_size % cfg.batch_size:
            return (f"config key 'mocov3.queue_size' = {mo.queue_size} must be a positive multiple "
                    f"of batch_size = {cfg.batch_size} with mocov3.negatives={mo.negatives} (each "
                    f"step enqueues whole global batches of keys)")
    elif mo.queue_size:
        return (f"config key 'mocov3.queue_size' = {mo.queue_size} is set but mocov3.negatives="
                f"{mo.negatives} uses no queue: set mocov3.negatives=queue or batch+queue")
    return None


SPECS: Dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("ibot", "jhssl.methods.ibot", Views(2, True, "block"), ema_teacher=True, mask_token=True,
               keys=_SELF_DISTILLATION_KEYS,
               summary="iBOT: DINO's CLS self-distillation + masked patch-token self-distillation"),
    MethodSpec("dino", "jhssl.methods.dino", Views(2, True, None), ema_teacher=True,
               keys=_SELF_DISTILLATION_KEYS, summary="DINO: CLS self-distillation over multi-crop views"),
    MethodSpec("mocov3", "jhssl.methods.mocov3", Views(2, False, None), ema_teacher=True,
               keys=frozenset({"mocov3"}), check_config=_mocov3_config_problem,
               search=("the head search ranks heads by D = KL between the teacher's prototype distributions "
                       "of base and head (Eq. 8) and trains Eq. 6 with a self-distillation loss per candidate; "
                       "MoCo v3 has no prototypes (its outputs are compared by similarity within a batch), and "
                       "the paper defines the search for DINO/iBOT only: use method=ibot or method=dino"),
               summary="MoCo v3: contrastive (InfoNCE) between online predictions and momentum keys, two views"),
    MethodSpec("mae", "jhssl.methods.mae", Views(1, False, "random", augment="crop_flip"), ema_teacher=False,
               keys=frozenset({"mae"}),
               search=("the head search ranks heads by D = KL between the teacher's prototype distributions "
                       "(Eq. 8) and trains Eq. 6 with a self-distillation loss per candidate; MAE has no "
                       "teacher and no prototypes: use method=ibot or method=dino"),
               summary="MAE: masked autoencoder (75 % random masks, visible-only encoder, pixel decoder)"),
)}


def method_names() -> Tuple[str, ...]:
    return tuple(SPECS)


def method_spec(name: str) -> MethodSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(SPECS)}") from None


def _owned(key: str, keys) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


def foreign_keys(name: str, set_keys) -> Dict[str, Tuple[str, ...]]:
    """``{key: (owner methods)}`` for each of ``set_keys`` (dotted keys given a non-default value)
    that some other method owns and method ``name`` does not read."""
    mine = method_spec(name).keys
    out = {}
    for key in set_keys:
        owners = tuple(n for n, s in SPECS.items() if n != name and _owned(key, s.keys))
        if owners and not _owned(key, mine):
            out[key] = owners
    return out


def config_problem(cfg) -> Optional[str]:
    """What ``cfg.method``'s own check (``MethodSpec.check_config``) finds wrong in ``cfg``, or None."""
    check = method_spec(cfg.method).check_config
    return check(cfg) if check is not None else None


def build_method(cfg):
    """The method object for ``cfg`` (``cfg.method`` picks the implementation file)."""
    spec = method_spec(cfg.method)
    return importlib.import_module(spec.module).build(cfg)
