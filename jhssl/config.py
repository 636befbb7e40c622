"""Experiment configuration: YAML files, ``_base_`` inheritance, dotted overrides, a typed schema.

A run is described by one YAML file plus ``key=value`` overrides from the command line::

    cfg = load_config("configs/demo.yaml", ["optim.lr=1e-3", "hssl.heads=[convnext,resmlp]"])
    cfg.optim.lr            # attribute access
    cfg.to_dict()           # plain nested dicts (what checkpoints store)

Every key must exist in :data:`SCHEMA` and every value must have the type of its default:
an unknown key or a wrong type raises :class:`ConfigError` naming the full dotted key and
what is allowed, before any data is read or any model is built.

Names shared with every tool (keep them): ``output_dir``, ``epochs``, ``seed``,
``batch_size`` (global, summed over MPI ranks), ``data.path``, ``data.subset``.

Defaults follow iBOT's released ViT-S/16 recipe (``main_ibot.py`` defaults plus the README
command line for ViT-S/16) and the HSSL paper (Appendix B; ConvNext auxiliary head of depth 3
without the first shortcut, Sec. 3.6 / Sec. 4). Each default says where it comes from.
"""
from __future__ import annotations

import copy
import os
import re
from typing import Any, Iterable

import yaml

from jhssl.fileio import atomic_write_text
from jhssl.errors import UserError
from jhssl.methods.registry import config_problem as method_config_problem, foreign_keys, method_names, \
    method_spec as _method_spec

__all__ = [
    "ConfigError", "Config", "F", "SCHEMA", "HEAD_ARCHS", "load_config", "config_from_dict",
    "parse_overrides", "apply_overrides", "dump_yaml", "default_config",
]

from models.head_archs import HEAD_ARCHS  # noqa: E402  (a jittor-free leaf: parsing a config never imports jittor)


class ConfigError(UserError, ValueError):
    """A configuration problem found before any compute (unknown key, wrong type, bad value)."""


class F:
    """Schema leaf with an explicit type where the default alone cannot say it.

    ``types``: allowed python types (``float`` also accepts ints); ``elem``: element type of
    list values; ``choices``: allowed values (for lists: allowed elements); ``nullable``: None
    allowed; ``check``: callable(value) -> error message or None, for ranges.
    """

    def __init__(self, default, types=None, elem=None, choices=None, nullable=False,
                 check=None, doc=""):
        self.default = default
        if types is None:
            if default is None:
                raise TypeError("F(None) needs explicit types")
            types = (type(default),)
        self.types = tuple(types) if isinstance(types, (tuple, list)) else (types,)
        if elem is None and list in self.types and isinstance(default, list) and default:
            elem = type(default[0])
        self.elem = elem
        self.choices = tuple(choices) if choices is not None else None
        self.nullable = nullable or default is None
        self.check = check
        self.doc = doc

    def describe(self) -> str:
        names = []
        for t in self.types:
            if t is list:
                names.append(f"list of {_type_name(self.elem)}" if self.elem else "list")
            else:
                names.append(_type_name(t))
        s = " or ".join(names)
        if self.choices:
            s += f" (one of {', '.join(map(repr, self.choices))})"
        if self.nullable:
            s += " or null"
        return s


def _type_name(t) -> str:
    return {float: "float", int: "int", bool: "bool", str: "str", list: "list"}.get(t, getattr(t, "__name__", str(t)))


def _in_unit_interval(v):
    if not (0.0 < v <= 1.0):
        return "must be in (0, 1]"


def _positive(v):
    if v <= 0:
        return "must be > 0"


def _non_negative(v):
    if v < 0:
        return "must be >= 0"


def _scale_pair(v):
    if len(v) != 2 or not (0.0 < v[0] <= v[1] <= 1.0):
        return "must be [min, max] with 0 < min <= max <= 1"


def _pair_positive(v):
    if len(v) != 2 or not (0.0 < v[0] <= v[1]):
        return "must be [min, max] with 0 < min <= max"


def _adam_betas(v):
    if len(v) != 2 or not all(0.0 <= b < 1.0 for b in v):
        return "must be [beta1, beta2] with 0 <= beta < 1"


def _mask_ratio(v):
    if not 0.0 <= v < 1.0:
        return "must be in [0, 1) (MAE's encoder needs a visible patch)"


def _triple(v):
    if len(v) != 3:
        return "must have 3 values (one per RGB channel)"


def _block_indices(v):
    if not v:
        return "must list at least one block index (null: off)"
    if any(i < 0 for i in v) or any(b <= a for a, b in zip(v, v[1:])):
        return "must be block indices >= 0 in strictly increasing order"


# ----------------------------------------------------------------------------- the schema
# A nested dict. A leaf is a plain default (its type is the allowed type; ints are accepted
# where the default is a float) or an F(...) for unions, nullables, choices and ranges.
# A section declared with NULLABLE_SECTIONS may be set to null as a whole (``hssl: null``).
SCHEMA: dict = {
    # A registered method (jhssl.methods.registry): ibot, dino, mocov3, mae. HSSL wraps any of them
    # (paper Sec. 4 "we follow its official implementation").
    "method": F("ibot", choices=method_names()),
    "output_dir": "output",
    "epochs": F(100, check=_positive),           # paper App. B: 100 epochs (ViT-S/16)
    "seed": 0,                                     # main_ibot.py default
    "batch_size": F(256, check=_positive),         # GLOBAL batch (paper App. B: 256)
    "num_workers": F(4, check=_non_negative),      # loader worker processes per rank
    "saveckp_freq": F(40, check=_non_negative),    # main_ibot.py: keep checkpoint{epoch} every 40 epochs (0: never)
    "save_every_iters": F(0, check=_non_negative),  # extra mid-epoch checkpoints (0: off)
    "keep_last": F(2, check=_positive),            # rolling checkpoints kept
    "resume": F("auto", types=str, nullable=True,
                doc="'auto' (latest checkpoint in output_dir), a checkpoint path, or null/'none'"),
    "log_freq": F(10, check=_positive),            # iterations between JSON log lines
    "eval_every": F(0, check=_non_negative),       # k-NN every N epochs (0: only at the end)
    "amp": False,                                  # mixed precision (jhssl.amp; fp32 master weights): GPU autocast, CPU bf16 GEMMs
    "amp_dtype": F("auto", choices=("auto", "bfloat16", "float16")),  # auto: bf16 on compute capability >= 8
    "grad_accum": F(1, check=_positive),
    "device": F("auto", choices=("auto", "cpu", "cuda")),

    "model": {
        "arch": "vit_small",                       # paper: ViT-S/16 base
        "patch_size": F(16, check=_positive),
        "img_size": F(None, types=int, nullable=True, doc="null: data.global_crop_size"),
        "drop_path_rate": F(0.1, check=_non_negative),   # paper App. B
        "out_dim": F(8192, check=_positive),       # iBOT README ViT-S/16: --out_dim 8192
        "patch_out_dim": F(8192, check=_positive),  # iBOT default patch_out_dim 8192
        "norm_last_layer": False,                  # iBOT README ViT-S/16: --norm_last_layer false
        "shared_last_layer": True,                 # iBOT README ViT-S/16: --shared_head true (CLS/patch share the last layer)
        "shared_last_layer_teacher": True,         # iBOT default shared_head_teacher=True
        "head_hidden_dim": F(2048, check=_positive),     # DINO/iBOT head MLP
        "head_bottleneck_dim": F(256, check=_positive),
        "head_nlayers": F(3, check=_positive),
        "use_bn_in_head": False,                   # DINO/iBOT default
        "act_in_head": F("gelu", choices=("gelu", "relu")),
    },

    # HSSL (paper Sec. 3). ``hssl: null`` is the plain iBOT/DINO baseline.
    "hssl": {
        "heads": F(["convnext"], elem=str, choices=HEAD_ARCHS),  # paper: ConvNext head by default
        "depth": F(3, check=_positive),            # paper Sec. 4: depth 3
        "first_shortcut": False,                   # paper Sec. 3.6: no shortcut in the first block
        "drop_path_rate": F(None, types=float, nullable=True, doc="null: model.drop_path_rate"),
        "image_level": True,                       # Eqs. 1-2: teacher head CLS supervises student base+head CLS
        "patch_level": F("head", choices=("head", "base", "none"),
                         doc="patch target: teacher head tokens (paper) or teacher base tokens (authors' code, Table 20)"),
        "separate_proj": True,                     # Table 18: separate projection MLPs for base and head
        "shared_prototypes": False,                # separate last layers unless asked
        # Eq. 1 sums L(z1h, z2b) + L(z1h, z2h); the authors' main_hssl.py weights each CLS term 0.5
        "average_cls_terms": False,
        # Ablation switches (paper Sec. 5); the defaults are the method of the paper.
        "supervision": F("heterogeneous", choices=("heterogeneous", "head_only", "separate"),
                         doc="Table XIV: heterogeneous = A->A + A->B (teacher head supervises student "
                             "base and head), head_only = A->A, separate = A->A + B->B"),
        "head_structure": F("full", choices=("full", "token_mixer", "mlp"),
                            doc="Table XV (ConvNext head): the whole block, its token mixer only, its MLP only"),
        "connection": F("serial", choices=("serial", "parallel", "deep_to_shallow"),
                        doc="serial: head on the base's tokens (paper); parallel: a whole ConvNeXt-T on "
                            "the images (Table XVII); deep_to_shallow: the base's own block "
                            "hssl.shallow_block supervised by its last layer, no head (Table XIX, DTS)"),
        "shallow_block": F(8, check=_non_negative,
                           doc="deep_to_shallow: index of the base block whose tokens are supervised"),
    },

    "optim": {
        "optimizer": F("adamw", choices=("adamw", "sgd")),
        "lr": F(5e-4, check=_positive),            # paper App. B ViT-S/16 base lr (scaled by batch/256)
        "lr_ref_batch": F(256, check=_positive),   # lr = lr * batch_size / lr_ref_batch (DINO/iBOT linear rule)
        "min_lr": F(1e-6, check=_non_negative),    # main_ibot.py default
        "warmup_epochs": F(10, check=_non_negative),  # paper App. B
        "weight_decay": F(0.04, check=_non_negative),  # cosine 0.04 -> 0.4 (DINO/iBOT)
        "weight_decay_end": F(0.4, check=_non_negative),
        "clip_grad": F(3.0, check=_non_negative),  # paper App. B ViT-S/16 (0 disables)
        "freeze_last_layer": F(1, check=_non_negative),  # main_ibot.py default (epochs)
        "momentum_teacher": F(0.996, check=_in_unit_interval),  # cosine 0.996 -> 1
        "betas": F([0.9, 0.999], elem=float, check=_adam_betas),  # AdamW betas (DINO/iBOT: torch default; MAE: 0.95)
    },

    # method: mae (facebookresearch/mae; decoder sizes of its ViT-B/L/H models)
    "mae": {
        "mask_ratio": F(0.75, check=_mask_ratio),      # MAE: 75 % of the patches masked
        "norm_pix_loss": True,                          # MAE's recipe: per-patch normalised pixel targets
        "decoder_embed_dim": F(512, check=_positive),   # MAE ViT-B/L/H: width 512
        "decoder_depth": F(8, check=_positive),         # 8 blocks
        "decoder_num_heads": F(16, check=_positive),    # 16 heads
        "init_from": F(None, types=str, nullable=True,
                       doc="zoo name or weights file for the base encoder (decoders and head start fresh)"),
        # MFF (Liu et al., ICCV 2023; the zh paper's MFF + HSSL rows): the decoder reads a learned
        # weighted fusion of these encoder blocks' outputs (0-based; the last must be the encoder's
        # last block). MMPretrain's MFF ViT-B configs: [1, 3, 5, 7, 9, 11] (300 epochs),
        # [0, 2, 4, 6, 8, 11] (800 epochs). null: plain MAE.
        "fusion_layers": F(None, types=list, elem=int, nullable=True, check=_block_indices,
                           doc="MFF: encoder blocks fused for the decoder (null: off)"),
    },

    "loss": {
        "warmup_teacher_temp": F(0.04, check=_positive),        # iBOT defaults
        "teacher_temp": F(0.07, check=_positive),               # iBOT README ViT-S/16: --teacher_temp 0.07
        "warmup_teacher_patch_temp": F(0.04, check=_positive),
        "teacher_patch_temp": F(0.07, check=_positive),
        "warmup_teacher_temp_epochs": F(30, check=_non_negative),  # iBOT README ViT-S/16
        "student_temp": F(0.1, check=_positive),
        "center_momentum": F(0.9, check=_in_unit_interval),
        "lambda1": F(1.0, check=_non_negative),                  # weight of CLS terms (iBOT)
        "lambda2": F(1.0, check=_non_negative),                  # weight of masked-patch terms (iBOT)
    },

    # MoCo v3 (method: mocov3). Defaults: the official ViT recipe (facebookresearch/moco-v3, CONFIG.md
    # ViT-Small: --moco-m-cos --moco-t=.2 --stop-grad-conv1; builder.py: 3-layer projector and 2-layer
    # predictor, hidden 4096, out 256, BN after every layer (the last one without affine)).
    "mocov3": {
        "proj_hidden_dim": F(4096, check=_positive),
        "proj_dim": F(256, check=_positive),
        "pred_hidden_dim": F(4096, check=_positive),
        "temperature": F(0.2, check=_positive),     # paper App. D / official --moco-t .2 (ViT)
        # Negatives: "batch" (MoCo v3: the other keys of the global batch, gathered over ranks),
        # "queue" (a FIFO memory bank of past keys, the paper's wording, MoCo v1/v2), or both.
        "negatives": F("batch", choices=("batch", "queue", "batch+queue")),
        "queue_size": F(0, check=_non_negative),     # keys in the FIFO; a multiple of batch_size
        "freeze_patch_embed": True,                  # official --stop-grad-conv1: random patch projection
    },

    "data": {
        "dataset": F("folder", choices=("folder", "fashion_mnist")),
        "path": F(None, types=str, nullable=True,
                  doc="folder: root/class/img; fashion_mnist: directory with the IDX files"),
        "split": F("train", choices=("train", "test")),  # fashion_mnist split for pretraining
        "subset": F(1.0, check=_in_unit_interval),  # fraction per class, chosen by seed
        # folder datasets: a text file of class folder names (WordNet ids, one per line) to keep,
        # e.g. the ImageNet-S300 / S50 class lists of the paper's ablations; applies to k-NN too
        "class_list": F(None, types=str, nullable=True, doc="null: every class folder"),
        "global_crops_scale": F([0.25, 1.0], elem=float, check=_scale_pair),   # paper App. B ViT-S/16
        "local_crops_scale": F([0.05, 0.25], elem=float, check=_scale_pair),   # paper App. B ViT-S/16
        "local_crops_number": F(10, check=_non_negative),                      # paper App. B
        "global_crop_size": F(224, check=_positive),
        "local_crop_size": F(96, check=_positive),
        "blur_sigma": F([0.1, 2.0], elem=float, check=_pair_positive),        # DINO GaussianBlur radius range
        "mean": F([0.485, 0.456, 0.406], elem=float, check=_triple),          # ImageNet statistics
        "std": F([0.229, 0.224, 0.225], elem=float, check=_triple),
        "on_bad_image": F("skip", choices=("skip", "fail")),
        # Single-channel images (Fashion-MNIST, gray JPEGs) are always replicated to RGB: every
        # base model takes 3 channels.
    },

    "mask": {
        # iBOT README ViT-S/16: --pred_ratio 0 0.3 --pred_ratio_var 0 0.2 (a list: one entry chosen per image)
        "pred_ratio": F([0.0, 0.3], types=(float, list), elem=float),
        "pred_ratio_var": F([0.0, 0.2], types=(float, list), elem=float),
        "pred_shape": F("block", choices=("block", "rand")),
        "pred_start_epoch": F(0, check=_non_negative),
        "pred_aspect_ratio": F([0.3, 1 / 0.3], elem=float, check=_pair_positive),  # iBOT default
    },

    "eval": {
        "knn_k": F([20], elem=int),                # DINO eval_knn: k=20 (10/100/200 on request)
        "knn_t": F(0.07, check=_positive),         # DINO eval_knn temperature
        "train_path": F(None, types=str, nullable=True, doc="null: data.path"),
        "val_path": F(None, types=str, nullable=True, doc="null: fashion_mnist test split of data.path"),
        "train_subset": F(1.0, check=_in_unit_interval),
        "val_subset": F(1.0, check=_in_unit_interval),
        "img_size": F(None, types=int, nullable=True, doc="null: data.global_crop_size"),
        "resize_size": F(None, types=int, nullable=True, doc="null: img_size * 256 / 224 (DINO)"),
        "batch_size": F(128, check=_positive),
        "which": F("teacher", choices=("teacher", "student")),
        "features": F("base", choices=("base", "head")),
        "knn_untrained": True,                     # k-NN of the untrained network before training (cached)
    },
}

NULLABLE_SECTIONS = {"hssl"}


# ----------------------------------------------------------------------------- Config
class Config(dict):
    """A dict with attribute access for nested sections (``cfg.optim.lr``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; keys: {', '.join(sorted(self))}") from None

    def __setattr__(self, name, value):
        self[name] = _wrap(value)

    def __deepcopy__(self, memo):
        return Config({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def to_dict(self) -> dict:
        return _unwrap(self)


def _wrap(v):
    if isinstance(v, dict) and not isinstance(v, Config):
        return Config({k: _wrap(x) for k, x in v.items()})
    return v


def _unwrap(v):
    if isinstance(v, dict):
        return {k: _unwrap(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unwrap(x) for x in v]
    return v


# ----------------------------------------------------------------------------- validation
_FLOAT_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _leaf(spec) -> F:
    return spec if isinstance(spec, F) else F(spec)


def _coerce_scalar(key, value, t, field: F):
    """Return ``value`` as type ``t`` or raise TypeError."""
    if t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads ``1e-3`` (no dot) as a string; accept numeric strings for floats.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
    raise TypeError


def _validate_leaf(key: str, value, field: F):
    if value is None:
        if field.nullable:
            return None
        raise ConfigError(f"config key '{key}' may not be null; expected {field.describe()}")
    out, ok = None, False
    for t in field.types:
        if t is list:
            if isinstance(value, str) and field.elem is str:
                value = [value]  # ``hssl.heads=convnext`` means a one-element list
            if isinstance(value, (list, tuple)):
                items = []
                try:
                    for x in value:
                        items.append(_coerce_scalar(key, x, field.elem, field) if field.elem else x)
                except TypeError:
                    continue
                out, ok = items, True
                break
        else:
            try:
                out, ok = _coerce_scalar(key, value, t, field), True
                break
            except TypeError:
                continue
    if not ok:
        raise ConfigError(f"config key '{key}' has the wrong type: got {type(value).__name__} "
                          f"{value!r}, expected {field.describe()}")
    if field.choices is not None:
        bad = [x for x in (out if isinstance(out, list) else [out]) if x not in field.choices]
        if bad:
            raise ConfigError(f"config key '{key}' has value {bad[0]!r}, allowed: "
                              f"{', '.join(map(repr, field.choices))}")
    if field.check is not None:
        msg = field.check(out)
        if msg:
            raise ConfigError(f"config key '{key}' = {out!r} {msg}")
    return out


def _validate_section(prefix: str, values: dict, schema: dict) -> Config:
    if not isinstance(values, dict):
        raise ConfigError(f"config key '{prefix}' must be a mapping (section with keys "
                          f"{', '.join(schema)}), got {type(values).__name__} {values!r}")
    unknown = [k for k in values if k not in schema]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        where = f"section '{prefix}'" if prefix else "the top level"
        raise ConfigError(f"unknown config key '{key}'; allowed keys in {where}: {', '.join(schema)}")
    out = Config()
    for k, spec in schema.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(spec, dict):
            v = values.get(k, {})
            if v is None:
                if k not in NULLABLE_SECTIONS:
                    raise ConfigError(f"config section '{key}' may not be null")
                out[k] = None
            else:
                out[k] = _validate_section(key, v, spec)
        else:
            field = _leaf(spec)
            v = values[k] if k in values else copy.deepcopy(field.default)
            out[k] = _validate_leaf(key, v, field)
    return out


def _cross_checks(cfg: Config) -> None:
    """Constraints between keys."""
    ps = cfg.model.patch_size
    for key in ("global_crop_size",):
        if cfg.data[key] % ps:
            raise ConfigError(f"config key 'data.{key}' = {cfg.data[key]} must be a multiple of "
                              f"model.patch_size = {ps} (the mask grid is crop_size / patch_size)")
    pr, pv = cfg.mask.pred_ratio, cfg.mask.pred_ratio_var
    prs = pr if isinstance(pr, list) else [pr]
    pvs = pv if isinstance(pv, list) else [pv] * len(prs)
    if not prs:
        raise ConfigError("config key 'mask.pred_ratio' may not be an empty list")
    if len(pvs) != len(prs):
        raise ConfigError(f"config keys 'mask.pred_ratio' ({pr}) and 'mask.pred_ratio_var' ({pv}) "
                          f"must have the same length (set both, e.g. mask.pred_ratio=0.3 mask.pred_ratio_var=0.0)")
    for r, v in zip(prs, pvs):
        if not (0.0 <= v <= r and r + v <= 1.0):
            raise ConfigError(f"config keys 'mask.pred_ratio'/'mask.pred_ratio_var': need "
                              f"0 <= var <= ratio and ratio + var <= 1, got ratio {r}, var {v}")
    if not cfg.eval.knn_k or any(k <= 0 for k in cfg.eval.knn_k):
        raise ConfigError(f"config key 'eval.knn_k' must be a non-empty list of positive ints, got {cfg.eval.knn_k}")
    if cfg.hssl is not None and not cfg.hssl.heads:
        raise ConfigError("config key 'hssl.heads' may not be empty (use hssl=null for the baseline)")
    h = cfg.hssl
    if h is not None and h.head_structure != "full" and list(h.heads) != ["convnext"]:
        raise ConfigError(f"config key 'hssl.head_structure' = {h.head_structure!r} is the ConvNext head's "
                          f"ablation (Table XV): set hssl.heads=[convnext], got {h.heads}")
    patch_terms = _method_spec(cfg.method).views.masks == "block"  # iBOT's masked patch terms
    if h is not None and h.connection == "parallel" and patch_terms and h.patch_level == "head":
        raise ConfigError("config key 'hssl.connection' = 'parallel': the parallel ConvNeXt-T has its own "
                          "token grid, so its patch tokens cannot supervise the base's; set "
                          "hssl.patch_level=base or none (or method=dino)")
    if h is not None and h.connection != "serial" and h.supervision != "heterogeneous":
        raise ConfigError(f"config keys 'hssl.supervision' = {h.supervision!r} and 'hssl.connection' = "
                          f"{h.connection!r}: the supervision ablation (Table XIV) is for the serial head")
    if cfg.resume is not None and cfg.resume.lower() == "none":
        cfg.resume = None
    problem = method_config_problem(cfg)  # the method's own section (MethodSpec.check_config)
    if problem:
        raise ConfigError(problem)


def _non_default_keys(values: dict, schema: dict, prefix: str = "") -> list:
    """Dotted keys of ``values`` (a validated section) whose value differs from the schema default."""
    out = []
    for k, spec in schema.items():
        key = f"{prefix}.{k}" if prefix else k
        v = values.get(k) if values is not None else None
        if isinstance(spec, dict):
            if v is not None:
                out += _non_default_keys(v, spec, key)
        elif v != _validate_leaf(key, copy.deepcopy(_leaf(spec).default), _leaf(spec)):
            out.append(key)
    return out


def _check_method_keys(cfg: Config) -> None:
    """Keys another method owns (jhssl.methods.registry), set for this one: an error naming both."""
    bad = foreign_keys(cfg.method, _non_default_keys(cfg, SCHEMA))
    if bad:
        owners = sorted({o for v in bad.values() for o in v})
        raise ConfigError(f"config key{'s' if len(bad) > 1 else ''} {', '.join(repr(k) for k in bad)} "
                          f"{'are' if len(bad) > 1 else 'is'} not read by method '{cfg.method}' (only by "
                          f"{', '.join(owners)}): remove {'them' if len(bad) > 1 else 'it'}")


def _drop_unknown(d: dict, schema: dict, prefix: str, dropped: list) -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in schema:
            dropped.append(key)
        elif isinstance(schema[k], dict) and isinstance(v, dict):
            out[k] = _drop_unknown(v, schema[k], key, dropped)
        else:
            out[k] = v
    return out


def config_from_dict(d: dict, strict: bool = True) -> Config:
    """Validate a plain nested dict (e.g. a checkpoint's ``config``) and fill in defaults.

    ``strict=False`` drops keys the schema does not know (with a warning) instead of failing:
    for configs stored in checkpoints written by an older version.
    """
    d = d if d is not None else {}
    if not strict:
        dropped: list = []
        d = _drop_unknown(d, SCHEMA, "", dropped)
        if dropped:
            import warnings
            warnings.warn(f"ignoring config keys unknown to this version: {', '.join(dropped)}", stacklevel=2)
    cfg = _validate_section("", d, SCHEMA)
    _check_method_keys(cfg)
    _cross_checks(cfg)
    return cfg


def default_config() -> Config:
    return config_from_dict({})


# ----------------------------------------------------------------------------- YAML + overrides
def _deep_merge(base: dict, over: dict) -> dict:
    """``over`` wins; nested dicts merge; a null or scalar replaces a whole section."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: str, _stack: tuple = ()) -> dict:
    path = os.path.abspath(path)
    if path in _stack:
        chain = " -> ".join(_stack + (path,))
        raise ConfigError(f"_base_ inheritance cycle: {chain}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config file {path}: '_base_' must be a path or a list of paths")
    merged: dict = {}
    for b in bases:  # relative to the including file; later bases win
        bpath = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
        merged = _deep_merge(merged, _read_yaml(bpath, _stack + (path,)))
    return _deep_merge(merged, data)


def parse_overrides(overrides: Iterable[str]) -> list[tuple[list[str], Any]]:
    """``["optim.lr=1e-3", "hssl=null"]`` -> ``[(["optim", "lr"], 0.001), (["hssl"], None)]``."""
    out = []
    for item in overrides or []:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else None
        except yaml.YAMLError:
            value = raw  # a bare string YAML cannot parse stays a string
        out.append((parts, value))
    return out


def apply_overrides(data: dict, overrides: Iterable[str], schema: dict | None = None) -> dict:
    """Apply dotted overrides to a raw (unvalidated) nested dict (``schema``: default the training one)."""
    data = copy.deepcopy(data)
    top = SCHEMA if schema is None else schema
    for parts, value in parse_overrides(overrides):
        node, schema = data, top
        for i, p in enumerate(parts[:-1]):
            dotted = ".".join(parts[:i + 1])
            sub_schema = schema.get(p) if isinstance(schema, dict) else None
            if not isinstance(sub_schema, dict):
                allowed = ", ".join(schema) if isinstance(schema, dict) else "(none)"
                raise ConfigError(f"unknown config section '{dotted}' in override "
                                  f"'{'.'.join(parts)}'; allowed: {allowed}")
            if node.get(p) is None:
                # Setting a key of a null section (``hssl.depth=2`` on a baseline) turns the
                # section on with its defaults for the other keys.
                node[p] = {}
            node, schema = node[p], sub_schema
        node[parts[-1]] = value
    return data


def load_config(path: str | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (with ``_base_`` chain; None: schema defaults), apply overrides, validate."""
    data = _read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data)


def dump_yaml(cfg, path: str) -> None:
    """Write the config as YAML, atomically (temporary file in the same directory, then rename)."""
    d = cfg.to_dict() if isinstance(cfg, Config) else _unwrap(cfg)
    atomic_write_text(path, yaml.safe_dump(d, sort_keys=False, default_flow_style=None))
