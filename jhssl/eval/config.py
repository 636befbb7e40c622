"""Config schemas of the evaluation tools (linear probe, fine-tuning), validated like the training
config (:mod:`jhssl.config`): unknown keys, wrong types and bad values are a :class:`ConfigError`
before any compute; YAML files may chain ``_base_``; dotted ``key=value`` overrides.

The pretraining checkpoint supplies the model and the data (its ``data``/``eval`` sections); these
schemas hold only the evaluation protocol.
"""
from __future__ import annotations

from jhssl.config import (ConfigError, F, _in_unit_interval, _non_negative, _positive, _read_yaml,
                          _validate_section, apply_overrides)

__all__ = ["LINEAR_SCHEMA", "FINETUNE_SCHEMA", "load_eval_config", "ConfigError"]


def _positive_list(v):
    if not v:
        return "may not be empty"
    bad = [x for x in v if not x > 0]
    if bad:
        return f"must hold only positive learning rates, got {bad[0]}"


def _scale(v):
    if len(v) != 2 or not (0.0 < v[0] <= v[1] <= 1.0):
        return "must be [min, max] with 0 < min <= max <= 1"


def _unit_or_zero(v):
    if not 0.0 <= v <= 1.0:
        return "must be in [0, 1]"


# Keys both tools share: which network, data sizes, label subsets (semi-supervised), output.
_COMMON = {
    "output_dir": "output/eval",
    "seed": 0,
    "which": F("teacher", choices=("teacher", "student")),
    "num_workers": F(2, check=_non_negative),
    "img_size": F(None, types=int, nullable=True, doc="null: the checkpoint's data.global_crop_size"),
    "resize_size": F(None, types=int, nullable=True, doc="val resize; null: img_size * 256 / 224"),
    # Semi-supervised (paper Table X): a class-balanced fraction of the labelled train set,
    # chosen by label_seed, or the exact list of a file written by an earlier run.
    "label_fraction": F(1.0, check=_in_unit_interval),
    "label_seed": 0,
    "label_subset_file": F(None, types=str, nullable=True),
    "train_subset": F(1.0, check=_in_unit_interval, doc="quick runs: fraction of the train set per class"),
    "val_subset": F(1.0, check=_in_unit_interval),
    "eval_batch_size": F(256, check=_positive),
}

LINEAR_SCHEMA: dict = dict(_COMMON, **{
    "output_dir": "output/linear",
    "features": F("base", choices=("base", "head")),
    # DINO eval_linear.py: vit_small -> 4 last CLS tokens; vit_base -> last CLS + mean patch token.
    # null: that rule, by embedding width (< 768: small-like).
    "n_last_blocks": F(None, types=int, nullable=True),
    "avgpool_patchtokens": F(None, types=bool, nullable=True),
    "epochs": F(100, check=_positive),             # DINO eval_linear default
    "batch_size": F(1024, check=_positive),        # DINO: 128 per GPU x 8 (global)
    # DINOv2 linear.py's grid (times batch/256, as DINO scales its single lr)
    "lrs": F([1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1], elem=float,
             check=_positive_list),
    "lr_ref_batch": F(256, check=_positive),
    "momentum": F(0.9, check=_unit_or_zero),       # DINO: SGD momentum 0.9, weight decay 0
    "weight_decay": F(0.0, check=_non_negative),
    "train_scale": F([0.08, 1.0], elem=float, check=_scale),  # RandomResizedCrop's default scale
    # augment: DINO's protocol (frozen network on augmented crops every epoch);
    # cached: features of the un-augmented train images computed once (fast on a CPU)
    "mode": F("augment", choices=("augment", "cached")),
    "eval_every": F(1, check=_non_negative, doc="epochs between val evaluations (0: only at the end)"),
})

FINETUNE_SCHEMA: dict = dict(_COMMON, **{
    "output_dir": "output/finetune",
    "epochs": F(100, check=_positive),             # paper Table XXI (iBOT columns)
    "batch_size": F(1024, check=_positive),        # paper Table XXI (global)
    "lr": F(5e-4, check=_positive),                # base lr, times batch/256 (BEiT)
    "lr_ref_batch": F(256, check=_positive),
    "warmup_epochs": F(5, check=_non_negative),
    "warmup_lr": F(1e-6, check=_non_negative),     # BEiT run_class_finetuning defaults
    "min_lr": F(1e-6, check=_non_negative),
    "weight_decay": F(0.05, check=_non_negative),
    "betas": F([0.9, 0.999], elem=float),
    "layer_decay": F(0.65, check=_in_unit_interval),  # 0.65 ViT-S, 0.60 ViT-B, 0.80 MAE ViT-S
    "drop_path": F(0.1, check=_unit_or_zero),         # 0.1 ViT-S, 0.2 ViT-B, 0.1 MAE
    "clip_grad": F(None, types=float, nullable=True),
    "label_smoothing": F(0.1, check=_unit_or_zero),
    "mixup": F(0.8, check=_non_negative),
    "cutmix": F(1.0, check=_non_negative),
    "mixup_prob": F(1.0, check=_unit_or_zero),
    "mixup_switch_prob": F(0.5, check=_unit_or_zero),
    "rand_augment": F("rand-m9-mstd0.5-inc1", types=str, nullable=True),
    "reprob": F(0.25, check=_unit_or_zero),
    "train_scale": F([0.08, 1.0], elem=float, check=_scale),
    # iBOT's fine-tuning (BEiT code) defaults to use_mean_pooling=True: LayerNorm(mean of the
    # patch tokens) -> linear; 'cls' is BEiT's --use_cls (final norm's CLS token).
    "pooling": F("mean", choices=("mean", "cls")),
    "init_scale": F(0.001, check=_positive),       # BEiT: classifier init scaled by 0.001
    "keep_last": F(1, check=_positive),
    "eval_every": F(1, check=_non_negative),
})

_SCHEMAS = {"linear": LINEAR_SCHEMA, "finetune": FINETUNE_SCHEMA}


def load_eval_config(kind: str, path: str | None = None, overrides=None):
    """The validated config of tool ``kind`` ('linear' | 'finetune'): ``path`` (YAML, optional),
    then dotted overrides."""
    schema = _SCHEMAS[kind]
    data = _read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [], schema=schema)
    cfg = _validate_section("", data, schema)
    if cfg.label_subset_file and cfg.label_fraction < 1.0:
        raise ConfigError("set either 'label_fraction' or 'label_subset_file', not both")
    if kind == "linear" and cfg.n_last_blocks is not None and cfg.n_last_blocks < 1:
        raise ConfigError(f"config key 'n_last_blocks' must be >= 1, got {cfg.n_last_blocks}")
    if kind == "finetune":
        if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
            raise ConfigError(f"config key 'betas' must be two values in [0, 1), got {cfg.betas}")
        if cfg.rand_augment is not None:
            from jhssl.eval.augment import parse_rand_augment
            try:
                parse_rand_augment(cfg.rand_augment)
            except ValueError as e:
                raise ConfigError(f"config key 'rand_augment': {e}") from None
    return cfg
