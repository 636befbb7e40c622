"""MFF (multi-level feature fusion, Liu et al., ICCV 2023) as an MAE option, ``mae.fusion_layers``
(issue 13): the fused decoder input against a manual computation, the identity case against plain
MAE, gradients, config errors, short training runs with checkpoint/export, the ViT-B/16 recipes."""
import os

import numpy as np
import pytest

from _train_helpers import ROOT, step_records, write_image_folder
from test_mae import _grads, batch_masks, mae_config

import jittor as jt  # noqa: E402

from jhssl.config import ConfigError, load_config  # noqa: E402
from jhssl.methods import build_model  # noqa: E402
from jhssl.methods.mae import masking_rows  # noqa: E402
from jhssl.data.masking import RandomPatchMask  # noqa: E402

# tiny_config's vit_test_tiny: width 32, 2 blocks (indices 0, 1); 16 px crops of 4 px patches
FUSE = ["mae.fusion_layers=[0,1]"]


def mff_config(out="/tmp/jhssl_unused", data_root=None, extra=(), hssl=True):
    """test_mae's tiny MAE, without drop path (MAE's recipe; and the forward passes are deterministic)."""
    return mae_config(out, data_root, ["model.drop_path_rate=0"] + list(extra), hssl=hssl)


def build(extra=(), hssl=True):
    return build_model(mff_config(extra=extra, hssl=hssl))


def batch(n=2, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 3, 16, 16)).astype(np.float32)
    return x, batch_masks(n, seed=seed)


def _layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


# ----------------------------------------------------------------------------- the fusion itself
@pytest.mark.parametrize("hssl", [False, True])
def test_fused_input_is_the_softmax_weighted_sum_of_projected_blocks(hssl):
    m = build(FUSE, hssl=hssl)
    net = m.student
    net.eval()
    rng = np.random.default_rng(1)
    net.fusion.weights.assign(jt.array(np.array([0.7, -0.4], np.float32).reshape(2, 1, 1, 1)))
    net.backbone.norm.weight.assign(jt.array(rng.normal(1, 0.2, 32).astype(np.float32)))
    net.backbone.norm.bias.assign(jt.array(rng.normal(0, 0.2, 32).astype(np.float32)))
    x, masks = batch()
    keep, _, _, k = masking_rows(masks)
    enc = net.backbone.forward_visible(jt.array(x), keep, k, layers=(0, 1))
    l0, l1 = enc["layers"][0].numpy(), enc["layers"][1].numpy()
    assert l0.shape == l1.shape == (2, 1 + k, 32)
    # the listed blocks' outputs, taken on the one pass: block 1 of block 0's output, and the last
    # block's output is what the plain encoder returns (pre-norm)
    np.testing.assert_allclose(net.backbone.blocks[1](enc["layers"][0]).numpy(), l1, atol=1e-5)
    np.testing.assert_allclose(l1[:, 1:], enc["head_input"].numpy(), atol=0)
    w = np.exp([0.7, -0.4]) / np.exp([0.7, -0.4]).sum()
    p = net.fusion.proj[0]
    fused = w[0] * (l0 @ p.weight.numpy().T + p.bias.numpy()) + w[1] * l1  # the last block: no projection
    out = net.encode(jt.array(x), keep, k)
    np.testing.assert_allclose(out["head_input"].numpy(), fused[:, 1:], atol=1e-5)
    ref = _layer_norm(fused, net.backbone.norm.weight.numpy(), net.backbone.norm.bias.numpy())
    np.testing.assert_allclose(out["tokens"].numpy(), ref, atol=1e-4)
    np.testing.assert_allclose(net.fusion.fusion_weights().numpy(), w, atol=1e-6)
    # the base model's own feature stays the last block's normed CLS (what is exported)
    np.testing.assert_allclose(out["base_cls"].numpy(), enc["cls"].numpy(), atol=0)


@pytest.mark.parametrize("hssl", [False, True])
def test_the_last_block_alone_is_plain_mae(hssl):
    from jhssl.checkpoint import load_state_dict_strict
    x, masks = batch(seed=2)
    plain = build(hssl=hssl)
    one = build(["mae.fusion_layers=[1]"], hssl=hssl)
    assert one.student.fusion.weights.is_stop_grad() and len(one.student.fusion.proj) == 0
    # the same weights in both (Jittor draws lazily initialised weights when they are first used,
    # so two builds of one seed need not agree): plain MAE's state + the single fusion weight
    state = {k: v.numpy() for k, v in plain.student.state_dict().items()}
    load_state_dict_strict(one.student, state, optional=("fusion.weights",))
    a, b = plain.compute_loss([x], [masks], 0), one.compute_loss([x], [masks], 0)
    assert set(a) == set(b)  # no weights logged for a single block
    for k in a:
        assert float(a[k].item()) == float(b[k].item()), (k, a[k].item(), b[k].item())
    # a real fusion changes the loss (the comparison above could not pass by accident)
    two = build(FUSE, hssl=hssl)
    load_state_dict_strict(two.student, state, optional=("fusion.weights", "fusion.proj.0.weight",
                                                         "fusion.proj.0.bias"))
    assert float(two.compute_loss([x], [masks], 0)["loss"].item()) != float(a["loss"].item())


@pytest.mark.parametrize("hssl", [False, True])
def test_fusion_weights_and_projections_get_gradients(hssl):
    m = build(FUSE, hssl=hssl)
    x, masks = batch(4, seed=3)
    parts = m.compute_loss([x], [masks], 0)
    assert {"mff_w0", "mff_w1"} <= set(parts)
    assert abs(float(parts["mff_w0"].item()) + float(parts["mff_w1"].item()) - 1.0) < 1e-6  # softmax
    fusion_keys = {"fusion.weights", "fusion.proj.0.weight", "fusion.proj.0.bias"}
    g = _grads(m, parts["loss"])
    assert fusion_keys <= set(g) and all(g[k] > 0 for k in fusion_keys), {k: g.get(k) for k in fusion_keys}
    assert min(g.values()) > 0, [n for n, v in g.items() if v == 0]  # every trained parameter still learns
    if hssl:  # both paths read the fused tokens: the feature decoder and the head's pixel path
        for part in ("feat_base", "pix_head"):
            gp = _grads(m, parts[part])
            assert all(gp[k] > 0 for k in fusion_keys), part
    # the logged weights are not part of the loss
    expect = parts["pix_head"] + parts["feat_base"] if hssl else parts["pix_base"]
    assert abs(float(parts["loss"].item()) - float(expect.item())) < 1e-6
    # MMPretrain decays its (L, 1, 1, 1) proj_weights (not a norm/bias/token): so do we
    from jhssl.optim import param_groups
    decayed = [n for grp in param_groups(m.student) if grp["regularized"] for n in grp["names"]]
    assert "fusion.weights" in decayed and "fusion.proj.0.weight" in decayed


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("hssl", [False, True])
def test_plain_and_fused_runs_of_one_seed_start_from_the_same_weights(hssl):
    """The fusion is built last: MAE and MFF arms of one seed are paired (same encoder, decoders, head)."""
    def initial(extra):
        jt.set_global_seed(7)
        state = build(extra, hssl=hssl).student.state_dict()
        return {k: v.numpy() for k, v in state.items()}  # materialised before the next build draws
    plain, fused = initial([]), initial(FUSE)
    assert set(fused) - set(plain) == {"fusion.weights", "fusion.proj.0.weight", "fusion.proj.0.bias"}
    assert [k for k in plain if not np.array_equal(plain[k], fused[k])] == []


def _one_line_error(extra, match, hssl=True):
    with pytest.raises(ConfigError, match=match) as e:
        build(extra, hssl=hssl)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("value, match", [
    ("[]", "at least one block"),
    ("[1,0]", "strictly increasing"),
    ("[0,0,1]", "strictly increasing"),
    ("[-1]", ">= 0"),
    ("[0,5]", "block 5 is out of range.*blocks 0..1"),
    ("[0]", "last entry must be the encoder's last block, 1"),
    ("[a]", "wrong type"),
])
def test_bad_fusion_layers_are_one_line_config_errors(value, match):
    msg = _one_line_error([f"mae.fusion_layers={value}"], match)
    assert "mae.fusion_layers" in msg


def test_a_base_without_vit_blocks_is_a_config_error():
    from models.registry import list_models, register_model
    from models.resmlp import RESMLP_OPTIONS, ResMLP
    if "resmlp_mff_tiny" not in list_models():
        @register_model(options=RESMLP_OPTIONS)
        def resmlp_mff_tiny(**kw):
            return ResMLP(embed_dim=32, depth=2, init_values=0.1, **kw)
    msg = _one_line_error(["model.arch=resmlp_mff_tiny", *FUSE], "needs a ViT base", hssl=False)
    assert "model.arch" in msg and "mae.fusion_layers" in msg


def test_fusion_layers_belong_to_mae():
    with pytest.raises(ConfigError, match=r"'mae.fusion_layers' is not read by method 'ibot' \(only by mae\)"):
        load_config(None, ["method=ibot", "mae.fusion_layers=[11]"])


# ----------------------------------------------------------------------------- training, checkpoint, export
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("mff_imgs")), n_per_class=4)


@pytest.mark.parametrize("hssl", [False, True])
def test_short_run_checkpoints_the_fusion_and_export_drops_it(data_root, tmp_path, hssl):
    from jhssl import checkpoint as ck
    from jhssl.convert import ConversionReport
    from jhssl.export import extract_base
    from jhssl.train import train
    out = str(tmp_path / "run")
    train(mff_config(out, data_root, FUSE + ["eval_every=0", "epochs=1"], hssl=hssl), resume=None, max_iters=2,
          progress=False, log=lambda *a: None)
    steps = step_records(out)
    assert sorted(steps) == [1, 2]
    for r in steps.values():
        assert np.isfinite(r["loss"]) and abs(r["mff_w0"] + r["mff_w1"] - 1.0) < 1e-5
    state = ck.load_checkpoint(ck.latest_checkpoint(out))
    keys = set(state["student"])
    assert {"fusion.weights", "fusion.proj.0.weight", "fusion.proj.0.bias"} <= keys
    w = state["student"]["fusion.weights"].reshape(-1)
    assert (w != 1.0).any()  # trained (a tiny step: the first warm-up iterations)
    report = ConversionReport()
    sd = extract_base(state, report=report)
    assert not any("fusion" in k or k.startswith("proj") for k in sd)
    assert set(sd) == {k[len("backbone."):] for k in keys if k.startswith("backbone.")}
    assert report.dropped["fusion.weights"] == "MFF fusion"
    # resuming rebuilds the fusion from the config and restores it
    train(mff_config(out, data_root, FUSE + ["eval_every=0", "epochs=2"], hssl=hssl), resume="auto",
          max_iters=1, progress=False, log=lambda *a: None)
    assert sorted(step_records(out)) == [1, 2, 3]


# ----------------------------------------------------------------------------- recipes
def _recipe(name, overrides=()):
    return load_config(os.path.join(ROOT, "configs", name + ".yaml"), list(overrides))


def test_vit_base_recipes_follow_mmpretrain_mff_and_the_baseline_is_a_twin():
    hssl, base = _recipe("mff_hssl_vit_base_16"), _recipe("mff_hssl_vit_base_16_baseline")
    c = hssl
    assert (c.method, c.model.arch, c.model.patch_size, c.epochs, c.batch_size) == ("mae", "vit_base", 16, 300, 4096)
    assert c.mae.fusion_layers == [1, 3, 5, 7, 9, 11]
    assert (c.mae.decoder_embed_dim, c.mae.decoder_depth, c.mae.decoder_num_heads) == (512, 8, 16)
    assert (c.mae.mask_ratio, c.mae.norm_pix_loss, c.optim.betas) == (0.75, True, [0.9, 0.95])
    assert (c.optim.lr, c.optim.lr_ref_batch, c.optim.warmup_epochs, c.optim.min_lr) == (1.5e-4, 256, 40, 0.0)
    assert (c.optim.weight_decay, c.optim.weight_decay_end, c.optim.clip_grad) == (0.05, 0.05, 0.0)
    assert c.hssl.heads == ["convnext"] and c.hssl.depth == 3 and not c.hssl.first_shortcut
    a, b = hssl.to_dict(), base.to_dict()
    assert b.pop("hssl") is None and a.pop("hssl")
    assert a.pop("output_dir") != b.pop("output_dir")
    assert a == b


@pytest.mark.parametrize("name", ["mff_hssl_vit_base_16", "mff_hssl_vit_base_16_baseline"])
def test_vit_base_recipe_builds_and_steps(name):
    from jhssl.optim import AdamW, param_groups
    cfg = _recipe(name, ["data.global_crop_size=32", "mae.decoder_depth=1", "mae.decoder_embed_dim=64",
                         "mae.decoder_num_heads=2", "hssl.depth=1"])
    m = build_model(cfg)
    assert m.student.fusion_layers == (1, 3, 5, 7, 9, 11) and len(m.student.fusion.proj) == 5
    opt = AdamW(param_groups(m.student), lr=1e-4, betas=tuple(cfg.optim.betas), weight_decay=0.05)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    gen = RandomPatchMask(16, 0.75)
    parts = m.compute_loss([x], [np.stack([gen(32, rng) for _ in range(2)])], 0)
    assert {"mff_w1", "mff_w11"} <= set(parts)
    w = m.student.fusion.weights.numpy().copy()
    opt.backward(parts["loss"])
    opt.step()
    assert np.isfinite(parts["loss"].item()) and not np.allclose(m.student.fusion.weights.numpy(), w)


def test_discrepancy_reads_the_head_on_the_fused_tokens_and_reconstruction_runs():
    m = build(FUSE)
    net = m.student
    x, _ = batch(3, seed=4)
    d, base_f, head_f = m.discrepancy_batch(net, x)
    assert d.shape == (3,) and np.isfinite(d).all() and base_f.shape == (3, 32)
    with jt.no_grad():
        full = net.backbone.forward_features(jt.array(x), layers=(0, 1))
        fused = net.fusion(full["layers"])[:, 1:]
        np.testing.assert_allclose(head_f, net.aux_head(fused, full["grid"])["cls"].numpy(), atol=1e-5)
        np.testing.assert_allclose(base_f, full["cls"].numpy(), atol=1e-6)  # the base's own CLS
    src, masked, recon = build(FUSE, hssl=False).reconstruct(x)
    assert recon.shape == src.shape == (3, 3, 16, 16) and np.isfinite(recon).all()
