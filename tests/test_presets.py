"""Recipe files against the tables they reproduce (issue 15).

Each expectation is written once, here, as the source gives it (the paper's tables, the authors'
released command line); the tests read the YAML files through ``load_config`` and compare.
"""
import os
import shlex

import numpy as np
import pytest

from _train_helpers import ROOT, register_tiny_vit

import jittor as jt  # noqa: E402

from jhssl.config import load_config  # noqa: E402
from jhssl.methods import build_model  # noqa: E402

# Paper Appendix B, Table XX: pre-training details of iBOT + HSSL on ImageNet-1K.
TABLE_XX = {
    "ViT-S/16": {"epochs": 100, "warmup_epochs": 10, "lr": 5e-4, "batch_size": 256, "clip_grad": 3.0,
                 "drop_path": 0.1, "global_crops": [0.25, 1.0], "local_crops": [0.05, 0.25], "n_local": 10},
    "ViT-B/16": {"epochs": 100, "warmup_epochs": 10, "lr": 7.5e-4, "batch_size": 256, "clip_grad": 0.3,
                 "drop_path": 0.1, "global_crops": [0.32, 1.0], "local_crops": [0.05, 0.32], "n_local": 10},
}
# Paper Table VI: (a) multi-crop, 2 global crops of 224 px and 10 local crops of 96 px; (b) without multi-crop.
TABLE_VI = {"a": {"n_local": 10, "global_size": 224, "local_size": 96}, "b": {"n_local": 0, "global_size": 224}}
# zh version, Table 6: rows without a dagger use no multi-crop.
ZH_TABLE_6 = {"Swin-T": {"method": "dino", "epochs": 200, "n_local": 0},
              "PVT-Small": {"method": "dino", "epochs": 200, "n_local": 0}}
# NK-JittorCV/Self-Supervised docs/HSSL.md: the authors' released ViT-B/16 command line.
AUTHORS_COMMAND = """--arch vit_base --auxiliary_depth 3 --teacher_temp 0.07 --teacher_patch_temp 0.07
--warmup_teacher_temp 0.04 --warmup_teacher_patch_temp 0.04 --warmup_teacher_temp_epochs 50 --norm_last_layer true
--warmup_epochs 10 --epochs 100 --lr 0.00075 --min_lr 2e-6 --weight_decay 0.04 --weight_decay_end 0.4
--shared_head true --shared_head_teacher true --out_dim 8192 --patch_out_dim 8192 --global_crops_scale 0.14 1
--pred_ratio 0 0.3 --pred_ratio_var 0 0.2 --pred_shape block --batch_size 256 --num_workers 6 --saveckp_freq 10
--freeze_last_layer 3 --accum_iter 1 --clip_grad 0.3"""
# main_hssl.py defaults for flags the command does not pass, and what its loss/head code does.
AUTHORS_DEFAULTS = {"local_crops_number": "0", "drop_path": "0.1", "momentum_teacher": "0.996",
                    "pred_start_epoch": "0", "lambda1": "1.0", "lambda2": "1.0", "patch_size": "16"}
AUTHORS_CODE = {"hssl.average_cls_terms": True,   # loss = 0.5 * (cls_base + cls_head) + patch_base
                "hssl.patch_level": "base",        # teacher_output_patch1: the teacher base's patches
                "hssl.shared_prototypes": True,    # HSSLHead: one last_layer for base and head
                "hssl.separate_proj": True,        # HSSLHead: mlp and mlp2
                "hssl.heads": ["convnext"], "hssl.first_shortcut": False, "method": "ibot"}

# their flag -> our config key
FLAG_KEYS = {
    "arch": "model.arch", "auxiliary_depth": "hssl.depth", "teacher_temp": "loss.teacher_temp",
    "teacher_patch_temp": "loss.teacher_patch_temp", "warmup_teacher_temp": "loss.warmup_teacher_temp",
    "warmup_teacher_patch_temp": "loss.warmup_teacher_patch_temp",
    "warmup_teacher_temp_epochs": "loss.warmup_teacher_temp_epochs", "norm_last_layer": "model.norm_last_layer",
    "warmup_epochs": "optim.warmup_epochs", "epochs": "epochs", "lr": "optim.lr", "min_lr": "optim.min_lr",
    "weight_decay": "optim.weight_decay", "weight_decay_end": "optim.weight_decay_end",
    "shared_head": "model.shared_last_layer", "shared_head_teacher": "model.shared_last_layer_teacher",
    "out_dim": "model.out_dim", "patch_out_dim": "model.patch_out_dim", "global_crops_scale": "data.global_crops_scale",
    "pred_ratio": "mask.pred_ratio", "pred_ratio_var": "mask.pred_ratio_var", "pred_shape": "mask.pred_shape",
    "batch_size": "batch_size", "num_workers": "num_workers", "saveckp_freq": "saveckp_freq",
    "freeze_last_layer": "optim.freeze_last_layer", "accum_iter": "grad_accum", "clip_grad": "optim.clip_grad",
    "local_crops_number": "data.local_crops_number", "drop_path": "model.drop_path_rate",
    "momentum_teacher": "optim.momentum_teacher", "pred_start_epoch": "mask.pred_start_epoch",
    "lambda1": "loss.lambda1", "lambda2": "loss.lambda2", "patch_size": "model.patch_size",
}


def _parse_flags(command):
    """``--flag v1 [v2 ...]`` -> {flag: value} with numbers, booleans and lists as argparse would give."""
    flags, key = {}, None
    for tok in shlex.split(command):
        if tok.startswith("--"):
            key = tok[2:]
            flags[key] = []
        else:
            flags[key].append(tok)

    def conv(v):
        if v in ("true", "false"):
            return v == "true"
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v
    return {k: [conv(x) for x in v] if len(v) > 1 else conv(v[0]) for k, v in flags.items()}


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _cfg(name):
    return load_config(os.path.join(ROOT, "configs", name + ".yaml"))


def _same(ours, theirs):
    if isinstance(theirs, list):
        return list(ours) == pytest.approx([float(x) for x in theirs])
    if isinstance(theirs, float):
        return ours == pytest.approx(theirs)
    return ours == theirs


def test_authors_preset_equals_their_command_line_and_code():
    cfg = _cfg("authors/ibot_hssl_vit_base_16")
    flags = _parse_flags(AUTHORS_COMMAND)
    flags.update({k: v for k, v in _parse_flags(" ".join(f"--{k} {v}" for k, v in AUTHORS_DEFAULTS.items())).items()
                  if k not in flags})
    unmapped = sorted(set(flags) - set(FLAG_KEYS))
    assert not unmapped, f"flags of the authors' command without a config key: {unmapped}"
    wrong = {f: (_get(cfg, FLAG_KEYS[f]), v) for f, v in flags.items() if not _same(_get(cfg, FLAG_KEYS[f]), v)}
    assert not wrong, f"preset differs from the authors' flags (ours, theirs): {wrong}"
    for key, v in AUTHORS_CODE.items():
        assert _get(cfg, key) == v, key
    base = _cfg("authors/ibot_vit_base_16_baseline")
    a, b = cfg.to_dict(), base.to_dict()
    assert base.hssl is None and {k for k in a if a[k] != b[k]} == {"hssl", "output_dir"}


@pytest.mark.parametrize("name,column", [("ibot_hssl_vit_small_16", "ViT-S/16"), ("ibot_hssl_vit_base_16", "ViT-B/16")])
def test_paper_recipes_equal_table_xx(name, column):
    t, c = TABLE_XX[column], _cfg(name)
    ours = {"epochs": c.epochs, "warmup_epochs": c.optim.warmup_epochs, "lr": c.optim.lr, "batch_size": c.batch_size,
            "clip_grad": c.optim.clip_grad, "drop_path": c.model.drop_path_rate,
            "global_crops": c.data.global_crops_scale, "local_crops": c.data.local_crops_scale,
            "n_local": c.data.local_crops_number}
    assert ours == t


def test_vit_base_takes_what_the_paper_omits_from_the_authors_command():
    """Where Table XX is silent, ibot_hssl_vit_base_16 follows the authors' ViT-B/16 command."""
    c, flags = _cfg("ibot_hssl_vit_base_16"), _parse_flags(AUTHORS_COMMAND)
    for flag in ("warmup_teacher_temp_epochs", "min_lr", "freeze_last_layer", "teacher_temp", "teacher_patch_temp",
                 "warmup_teacher_temp", "warmup_teacher_patch_temp", "norm_last_layer"):
        assert _same(_get(c, FLAG_KEYS[flag]), flags[flag]), flag
    assert c.hssl.patch_level == "head" and not c.hssl.average_cls_terms  # the paper's Eqs. 1-2


@pytest.mark.parametrize("name,row", [("dino_hssl_vit_small_16", "a"), ("dino_hssl_vit_small_16_no_multicrop", "b")])
def test_dino_recipes_follow_table_vi(name, row):
    c, t = _cfg(name), TABLE_VI[row]
    assert c.method == "dino" and c.data.local_crops_number == t["n_local"]
    assert c.data.global_crop_size == t["global_size"]
    if "local_size" in t:
        assert c.data.local_crop_size == t["local_size"]


@pytest.mark.parametrize("name,row,arch", [("dino_hssl_swin_tiny_no_multicrop", "Swin-T", "swin_tiny"),
                                           ("dino_hssl_pvt_v2_b2_no_multicrop", "PVT-Small", "pvt_v2_b2")])
def test_zh_table_6_rows(name, row, arch):
    c, t = _cfg(name), ZH_TABLE_6[row]
    assert (c.method, c.epochs, c.data.local_crops_number, c.model.arch) == (t["method"], t["epochs"], t["n_local"], arch)


NEW_RECIPES = ["dino_hssl_vit_small_16_no_multicrop", "dino_hssl_swin_tiny_no_multicrop",
               "dino_hssl_pvt_v2_b2_no_multicrop", "dino_hssl_resnet50", "dino_hssl_resmlp_24", "ibot_hssl_swin_tiny"]


@pytest.mark.parametrize("name", NEW_RECIPES)
def test_each_new_recipe_has_a_baseline_twin(name):
    hssl, base = _cfg(name), _cfg(name + "_baseline")
    a, b = hssl.to_dict(), base.to_dict()
    assert hssl.hssl is not None and base.hssl is None
    assert {k for k in a if a[k] != b[k]} == {"hssl", "output_dir"}


def test_ablation_recipes_change_one_switch_each():
    root = _cfg("ablations/s300_dino_vit_small_16").to_dict()
    assert root["hssl"]["depth"] == 1 and root["epochs"] == 100  # Sec. 5: depth 1, 100 epochs
    expected = {"table14_supervision_head_only": {"supervision": "head_only"},
                "table14_supervision_separate": {"supervision": "separate"},
                "table15_head_token_mixer": {"head_structure": "token_mixer"},
                "table15_head_mlp": {"head_structure": "mlp"},
                "table17_serial_depth3": {"depth": 3},
                "table17_parallel_convnext_tiny": {"connection": "parallel"},
                "table19_deep_to_shallow": {"connection": "deep_to_shallow"}}
    for name, change in expected.items():
        c = _cfg("ablations/" + name).to_dict()
        diff = {k: v for k, v in c["hssl"].items() if root["hssl"][k] != v}
        diff.pop("shallow_block", None)
        assert diff == change, name
        c.pop("hssl"), c.pop("output_dir")
        assert c == {k: v for k, v in root.items() if k not in ("hssl", "output_dir")}, name


def test_authors_preset_runs_one_step_without_local_crops():
    register_tiny_vit()
    cfg = load_config(os.path.join(ROOT, "configs", "authors", "ibot_hssl_vit_base_16.yaml"),
                      ["model.arch=vit_test_tiny", "model.patch_size=4", "model.out_dim=32", "model.patch_out_dim=32",
                       "model.head_hidden_dim=16", "model.head_bottleneck_dim=8", "hssl.depth=1",
                       "data.global_crop_size=16"])
    m = build_model(cfg)
    assert not any("aux_last_layer" in k for k in m.student.state_dict())  # one prototype layer
    rng = np.random.default_rng(0)
    crops = [jt.array(rng.normal(size=(2, 3, 16, 16)).astype(np.float32)) for _ in range(2)]
    masks = [jt.array(rng.random((2, 4, 4)) < 0.5) for _ in range(2)]
    parts = m.compute_loss(crops, masks, 0)
    assert set(parts) == {"loss", "cls_base", "cls_head", "patch_base"}
    want = 0.5 * (parts["cls_base"].item() + parts["cls_head"].item()) + parts["patch_base"].item()
    assert abs(parts["loss"].item() - want) < 1e-4
