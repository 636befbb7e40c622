"""Paper Sec. 5 ablation switches (issue 15): each changes the computation as its table describes.

Table XIV supervision manner, Table XV ConvNext head structure, Table XVII parallel ConvNeXt-T,
Table XIX deep-to-shallow, the authors' 0.5 CLS weighting, and ``data.class_list``.
"""
import json
import os

import numpy as np
import pytest

from _train_helpers import tiny_config, write_image_folder

import jittor as jt  # noqa: E402

import models  # noqa: E402
import models.convnext as convnext_module  # noqa: E402
from models.heads import ConvNextHeadBlock, ParallelAuxNet, ShallowTap, build_aux_head  # noqa: E402

from jhssl.config import ConfigError, load_config  # noqa: E402
from jhssl.convert import reference_dir  # noqa: E402
from jhssl.methods import build_model  # noqa: E402
from jhssl.methods.losses import SelfDistillationLoss  # noqa: E402

B = 2
NO_DROP = ["model.drop_path_rate=0.0"]  # two forwards of one batch must agree


def _batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    g, l = cfg.data.global_crop_size, cfg.data.local_crop_size
    crops = [jt.array(rng.normal(size=(B, 3, g, g)).astype(np.float32)) for _ in range(2)]
    crops += [jt.array(rng.normal(size=(B, 3, l, l)).astype(np.float32)) for _ in range(cfg.data.local_crops_number)]
    return crops


def _fresh_loss_value(cfg, teacher, student):
    """L(teacher, student) of a fresh DINO loss (zero center) at epoch 0."""
    L = cfg.loss
    loss = SelfDistillationLoss(cfg.model.out_dim, cfg.model.out_dim, 2, cfg.data.local_crops_number, cfg.epochs,
                                warmup_teacher_temp=L.warmup_teacher_temp, teacher_temp=L.teacher_temp,
                                warmup_teacher_temp_epochs=L.warmup_teacher_temp_epochs, use_patch=False)
    return float(loss({"s": student}, {}, teacher, None, None, 0)["loss"].item())


# ----------------------------------------------------------------------------- Table XIV
@pytest.mark.parametrize("manner,terms", [
    ("heterogeneous", {"cls_base": "head_cls", "cls_head": "head_cls"}),   # A->A + A->B (ours)
    ("head_only", {"cls_head": "head_cls"}),                               # A->A
    ("separate", {"cls_base": "base_cls", "cls_head": "head_cls"}),        # A->A + B->B
])
def test_supervision_manner_picks_the_targets_of_table_xiv(manner, terms):
    cfg = tiny_config(method="dino", extra=NO_DROP + [f"hssl.supervision={manner}"])
    jt.set_global_seed(0)
    m = build_model(cfg)
    crops = _batch(cfg)
    t, s, _ = m.forward_pair(crops, None)
    parts = m.compute_loss(crops, None, 0)
    assert set(parts) == set(terms) | {"loss"}
    for name, target in terms.items():
        want = _fresh_loss_value(cfg, t[target], s[name.replace("cls_", "") + "_cls"])
        assert abs(float(parts[name].item()) - want) < 1e-4 * max(1.0, abs(want)), (name, target)
    assert abs(float(parts["loss"].item()) - sum(float(parts[k].item()) for k in terms)) < 1e-4
    if manner == "separate":
        # the head's own term keeps its own center: both move, towards different targets
        assert hasattr(m.loss, "head_self")
        assert not np.allclose(m.loss.center.numpy(), m.loss.head_self.center.numpy())
        assert "head_self.center" in m.loss.state_dict()


def test_supervision_ablation_applies_to_ibot_patch_terms():
    cfg = tiny_config(method="ibot", extra=["hssl.supervision=separate"])
    m = build_model(cfg)
    assert (m.patch_students, m.patch_target) == (["base"], "base_patch")
    crops = _batch(cfg)
    g = cfg.data.global_crop_size // cfg.model.patch_size
    masks = [jt.array(np.random.default_rng(i).random((B, g, g)) < 0.5) for i in range(2)]
    parts = m.compute_loss(crops, masks, 0)
    assert {"patch_base", "patch_head", "cls_base", "cls_head"} <= set(parts)
    head_only = build_model(tiny_config(method="ibot", extra=["hssl.supervision=head_only"]))
    assert (head_only.patch_students, head_only.patch_target) == (["head"], "head_patch")


def test_authors_average_cls_terms_halves_the_cls_sum():
    for avg, factor in ((False, 1.0), (True, 0.5)):  # Eq. 1 sums; the authors' main_hssl.py: 0.5 each
        cfg = tiny_config(method="dino", extra=[f"hssl.average_cls_terms={str(avg).lower()}"])
        parts = build_model(cfg).compute_loss(_batch(cfg), None, 0)
        total = float(parts["cls_base"].item()) + float(parts["cls_head"].item())
        assert abs(float(parts["loss"].item()) - factor * total) < 1e-4


# ----------------------------------------------------------------------------- Table XV
def test_convnext_head_structure_token_mixer_or_mlp_only():
    jt.set_global_seed(0)
    x = jt.randn(2, 4, 4, 16)
    full = ConvNextHeadBlock(16, shortcut=False, drop_path=0.0)
    mixer = ConvNextHeadBlock(16, shortcut=False, drop_path=0.0, structure="token_mixer")
    mlp = ConvNextHeadBlock(16, shortcut=True, drop_path=0.0, structure="mlp")
    assert {k.split(".")[0] for k in full.state_dict()} == {"dwconv", "norm", "pwconv1", "pwconv2"}
    assert {k.split(".")[0] for k in mixer.state_dict()} == {"dwconv"}
    assert {k.split(".")[0] for k in mlp.state_dict()} == {"norm", "pwconv1", "pwconv2"}
    # token mixer only (first block: no shortcut) = the depthwise conv itself
    np.testing.assert_allclose(mixer(x).numpy(), mixer.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy(),
                               rtol=1e-5, atol=1e-6)
    # MLP only: x + MLP(x), per token (no spatial mixing): permuting tokens commutes with the block
    perm = np.random.default_rng(0).permutation(16)
    xt = x.reshape(2, 16, 16)
    y_perm = mlp(jt.array(xt.numpy()[:, perm]).reshape(2, 4, 4, 16)).numpy().reshape(2, 16, 16)
    np.testing.assert_allclose(y_perm, mlp(x).numpy().reshape(2, 16, 16)[:, perm], rtol=1e-5, atol=1e-5)
    # through the config
    head = build_aux_head(["convnext"], 16, depth=2, structure="mlp")
    assert not any("dwconv" in k for k in head.state_dict())
    cfg = tiny_config(method="dino", extra=["hssl.head_structure=token_mixer"])
    assert not any("pwconv" in k for k in build_model(cfg).student.state_dict())
    with pytest.raises(ConfigError, match="head_structure"):
        tiny_config(extra=["hssl.heads=[resmlp]", "hssl.head_structure=mlp"])


# ----------------------------------------------------------------------------- Table XVII
def test_convnext_tiny_keys_shapes_and_count_equal_timm():
    path = os.path.join(reference_dir() or "", "convnext_tiny.json")
    if not os.path.isfile(path):
        pytest.skip("timm reference convnext_tiny.json not present")
    with open(path) as f:
        ref = json.load(f)
    model = models.create_model("convnext_tiny")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {e["key"]: tuple(e["shape"]) for e in ref["state_dict"]}
    assert sum(int(np.prod(p.shape)) for p in model.parameters()) == ref["num_parameters"] == 27820128


def _tiny_convnext(drop_path_rate=0.0):
    return convnext_module.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), drop_path_rate=drop_path_rate)


def test_parallel_connection_runs_a_whole_convnext_on_the_images(monkeypatch):
    monkeypatch.setattr(convnext_module, "convnext_tiny", _tiny_convnext)
    cfg = tiny_config(method="dino", extra=NO_DROP + ["hssl.connection=parallel", "data.global_crop_size=32",
                                            "data.local_crop_size=32"])
    jt.set_global_seed(0)
    m = build_model(cfg)
    aux = m.student.aux_head
    assert isinstance(aux, ParallelAuxNet) and isinstance(aux.net, convnext_module.ConvNeXt)
    assert any(k.startswith("aux_head.net.stages.3.blocks.0.conv_dw") for k in m.student.state_dict())
    crops = _batch(cfg)
    t1, s1, _ = m.forward_pair(crops, None)
    # the head output depends on the images only, not on the base model: zeroing the base changes
    # the base outputs and leaves the head outputs as they were
    for p in m.student.backbone.parameters():
        p.assign(jt.zeros(p.shape))
    _, s2, _ = m.forward_pair(crops, None)
    np.testing.assert_allclose(s1["head_cls"].numpy(), s2["head_cls"].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(s1["base_cls"].numpy(), s2["base_cls"].numpy())
    parts = m.compute_loss(crops, None, 0)
    assert set(parts) == {"loss", "cls_base", "cls_head"} and np.isfinite(parts["loss"].item())
    with pytest.raises(ConfigError, match="parallel"):
        tiny_config(method="ibot", extra=["hssl.connection=parallel"])


# ----------------------------------------------------------------------------- Table XIX
def test_deep_to_shallow_supervises_a_shallow_block_with_the_last_layer():
    cfg = tiny_config(method="dino", extra=["hssl.connection=deep_to_shallow", "hssl.shallow_block=0"])
    jt.set_global_seed(0)
    m = build_model(cfg)
    tap = m.student.aux_head
    assert isinstance(tap, ShallowTap)
    assert set(tap.state_dict()) == {"norm.weight", "norm.bias"}  # no copy of the base's parameters
    m.student.eval()
    x = _batch(cfg)[0]
    bb = m.student.backbone
    # the "head" CLS = LayerNorm of the CLS token after block 0 (recomputed by hand)
    tokens, (h, w) = bb.patch_embed(x)
    seq = jt.concat([bb.cls_token.broadcast((B, 1, bb.embed_dim)), tokens.reshape(B, h * w, -1)], dim=1)
    seq = seq + bb._pos_embed((h, w))
    want = tap.norm(bb.blocks[0](seq))[:, 0].numpy()
    out = m.student([x], n_global=1, want={"head_feat"})
    np.testing.assert_allclose(out["head_feat"].numpy(), want, rtol=1e-4, atol=1e-5)
    assert (m.cls_students, m.cls_target) == (["base", "head"], "base_cls")  # deep teacher base is the target
    m.student.train()
    parts = m.compute_loss(_batch(cfg), None, 0)
    assert set(parts) == {"loss", "cls_base", "cls_head"}
    with pytest.raises(ValueError, match="deep-to-shallow block"):
        build_model(tiny_config(method="dino", extra=["hssl.connection=deep_to_shallow", "hssl.shallow_block=5"]))


# ----------------------------------------------------------------------------- data.class_list
def test_class_list_selects_class_folders(tmp_path):
    from jhssl.data.datasets import build_source
    root = write_image_folder(str(tmp_path / "imgs"), n_per_class=2, classes=("n01", "n02", "n03"), size=8)
    lst = tmp_path / "s2.txt"
    lst.write_text("# two of three\nn03\nn01\n\n")
    src = build_source("folder", os.path.join(root, "train"), class_list=str(lst))
    assert src.classes == ["n01", "n03"] and len(src) == 4 and sorted(set(src.labels.tolist())) == [0, 1]
    assert all(("/n01/" in src.describe(i)) == (src.labels[i] == 0) for i in range(len(src)))
    lst.write_text("n01\nn99\n")
    with pytest.raises(FileNotFoundError, match="n99"):
        build_source("folder", os.path.join(root, "train"), class_list=str(lst))
    cfg = load_config(None, [f"data.class_list={lst}"])
    assert cfg.data.class_list == str(lst)
