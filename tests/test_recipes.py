"""Each paper recipe parses, builds (real architectures) and runs one training step with sizes shrunk."""
import glob
import os

import numpy as np
import pytest

from _train_helpers import ROOT

import jittor as jt  # noqa: E402

from jhssl.config import load_config
from jhssl.methods import build_model
from jhssl.optim import AdamW, clip_gradients, param_groups

RECIPES = ["ibot_hssl_vit_small_16", "ibot_hssl_vit_base_16", "dino_hssl_vit_small_16", "dino_hssl_swin_tiny"]
SHRINK = ["data.local_crops_number=1", "model.out_dim=64", "model.patch_out_dim=64", "model.head_hidden_dim=32",
          "model.head_bottleneck_dim=16", "hssl.depth=1"]


def _cfg(name):
    return load_config(os.path.join(ROOT, "configs", name + ".yaml"))


CPU_RECIPES = ["fmnist_ibot_hssl_vit_tiny"]  # the Fashion-MNIST CPU recipe (issue 11), not a paper table


def test_all_recipe_files_parse_and_each_has_a_baseline_twin():
    names = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))}
    for r in RECIPES + CPU_RECIPES:
        assert r in names and r + "_baseline" in names, r
        hssl, base = _cfg(r), _cfg(r + "_baseline")
        assert hssl.hssl is not None and hssl.hssl.heads == ["convnext"] and hssl.hssl.depth == 3
        assert not hssl.hssl.first_shortcut
        assert base.hssl is None
        a, b = hssl.to_dict(), base.to_dict()
        a.pop("hssl"), b.pop("hssl"), a.pop("output_dir"), b.pop("output_dir")
        assert a == b, f"{r}: baseline differs in more than hssl/output_dir"


def test_paper_appendix_b_values():
    s, b = _cfg("ibot_hssl_vit_small_16"), _cfg("ibot_hssl_vit_base_16")
    for c in (s, b):
        assert (c.epochs, c.batch_size, c.optim.warmup_epochs, c.model.drop_path_rate) == (100, 256, 10, 0.1)
        assert (c.data.local_crops_number, c.model.out_dim, c.method) == (10, 8192, "ibot")
    assert (s.optim.lr, s.optim.clip_grad, s.data.global_crops_scale, s.data.local_crops_scale) == \
        (5e-4, 3.0, [0.25, 1.0], [0.05, 0.25])
    assert (b.optim.lr, b.optim.clip_grad, b.data.global_crops_scale, b.data.local_crops_scale) == \
        (7.5e-4, 0.3, [0.32, 1.0], [0.05, 0.32])
    assert b.model.arch == "vit_base" and _cfg("dino_hssl_swin_tiny").model.arch == "swin_tiny"


@pytest.mark.parametrize("name", RECIPES + [r + "_baseline" for r in RECIPES[:1]])
def test_recipe_builds_and_runs_one_step(name):
    swin = "swin" in name
    size = 64 if swin else 32
    cfg = load_config(os.path.join(ROOT, "configs", name + ".yaml"),
                      SHRINK + [f"data.global_crop_size={size}", f"data.local_crop_size={size // 2}"])
    m = build_model(cfg)
    opt = AdamW(param_groups(m.student), lr=1e-4, weight_decay=0.04)
    rng = np.random.default_rng(0)
    B = 2
    crops = [jt.array(rng.normal(size=(B, 3, size, size)).astype(np.float32)) for _ in range(2)]
    crops.append(jt.array(rng.normal(size=(B, 3, size // 2, size // 2)).astype(np.float32)))
    masks = None
    if cfg.method == "ibot":
        g = size // cfg.model.patch_size
        masks = [jt.array(rng.random((B, g, g)) < 0.5) for _ in range(2)]
    parts = m.compute_loss(crops, masks, 0)
    expect = {"cls_base", "loss"} | ({"cls_head"} if cfg.hssl else set())
    if cfg.method == "ibot":
        expect |= {"patch_base"} | ({"patch_head"} if cfg.hssl else set())
    assert set(parts) == expect
    w = m.student.head.mlp[0].weight.numpy().copy()
    opt.backward(parts["loss"])
    clip_gradients(opt, cfg.optim.clip_grad)
    opt.step()
    m.ema_update(0.996)
    assert np.isfinite(parts["loss"].item())
    assert not np.allclose(m.student.head.mlp[0].weight.numpy(), w)


def test_demo_is_the_cpu_recipe():
    """The demo is the recipe plus mixed precision (bf16 GEMMs where the CPU has them: the same k-NN
    as fp32 over 3 seeds, benchmarks/results/fmnist_seeds_bf16.md)."""
    demo, recipe = _cfg("demo").to_dict(), _cfg("fmnist_ibot_hssl_vit_tiny").to_dict()
    for c in (demo, recipe):
        c.pop("output_dir"), c.pop("keep_last")
    assert demo.pop("amp") is True and recipe.pop("amp") is False
    assert demo == recipe


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def test_fmnist_search_runs_on_the_recipes_own_setting():
    """D per head (benchmarks/results/fmnist_seeds_heads.md) is only comparable with the heads' gains if the
    search trains the recipe's base on the recipe's data: it may differ only in the search's Eq. 6 settings."""
    search = _flat(_cfg("search_fmnist_ibot_vit_tiny").to_dict())
    recipe = _flat(_cfg("fmnist_ibot_hssl_vit_tiny").to_dict())
    differ = {k for k in set(search) | set(recipe) if search.get(k) != recipe.get(k)}
    assert differ == {"output_dir", "epochs", "hssl.heads", "hssl.depth", "hssl.patch_level",
                      "data.local_crops_number", "optim.warmup_epochs", "optim.freeze_last_layer", "eval.val_subset"}
    assert search["hssl.heads"] == ["convnext", "resnet", "resmlp", "poolformer", "vit", "swin"]
    assert (search["hssl.depth"], search["hssl.patch_level"], search["data.local_crops_number"]) == (1, "none", 0)
