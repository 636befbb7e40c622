"""Every base model trains with its paper method (issue 15): a few optimizer steps of each base x method
pair, loss finite, every student parameter moves; options a model does not take are config errors.

Tiny variants of each family (same classes, same declared options as the real factories) keep each
case to a few seconds on 2 CPU cores.
"""
import numpy as np
import pytest

from _train_helpers import ROOT  # noqa: F401  (puts the repo on sys.path)

import jittor as jt  # noqa: E402

import models  # noqa: E402
from models.pvt import PyramidVisionTransformerV2  # noqa: E402
from models.registry import list_models, model_info, register_model  # noqa: E402
from models.resmlp import RESMLP_OPTIONS, ResMLP  # noqa: E402
from models.resnet import ResNet  # noqa: E402
from models.swin import SWIN_OPTIONS, SwinTransformer  # noqa: E402

from jhssl.config import ConfigError, load_config  # noqa: E402
from jhssl.base_models import build_base_model, check_base_model, mask_patch_size  # noqa: E402
from jhssl.methods import build_model  # noqa: E402
from jhssl.optim import AdamW, param_groups  # noqa: E402


def _register_tiny():
    if "resnet_test_tiny" in list_models():
        return

    @register_model(options=model_info("resnet50").options)
    def resnet_test_tiny(**kw):
        # zero_init_last off: with only three steps the zero bn3 gammas would hold the block convs still
        return ResNet(layers=(1, 1, 1, 1), channels=(4, 8, 8, 8), stem_width=8, zero_init_last=False, **kw)

    @register_model(options=RESMLP_OPTIONS)
    def resmlp_test_tiny(**kw):
        return ResMLP(embed_dim=32, depth=2, init_values=0.1, **kw)

    @register_model(options=model_info("pvt_v2_b2").options)
    def pvt_test_tiny(**kw):
        return PyramidVisionTransformerV2(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2),
                                          mlp_ratios=(2, 2, 2, 2), **kw)

    @register_model(options=SWIN_OPTIONS, mask_patch_multiple=8)
    def swin_test_tiny(**kw):
        return SwinTransformer(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=2, **kw)


_register_tiny()

SMALL = ["model.out_dim=32", "model.patch_out_dim=32", "model.head_hidden_dim=16", "model.head_bottleneck_dim=8",
         "hssl.depth=1", "data.local_crops_number=1", "model.drop_path_rate=0.0", "optim.clip_grad=0.0"]

# base, method, head (paper pairing), patch size, global crop, local crop
CASES = {
    # Table I (en) / zh Table 1: ResNet base, ResMLP the best head (64.4 top-1), DINO
    "resnet-dino": ("resnet_test_tiny", "dino", "resmlp", 16, 64, 32),
    # zh Table 2: ResMLP base with a ViT head
    "resmlp-dino": ("resmlp_test_tiny", "dino", "vit", 8, 32, 16),
    "resmlp-ibot": ("resmlp_test_tiny", "ibot", "vit", 8, 32, 16),
    # zh Table 6: PVT-Small (pvt_v2_b2 stands in) with DINO
    "pvt-dino": ("pvt_test_tiny", "dino", "convnext", 16, 64, 32),
    # Swin-T with iBOT: masks on the last stage's grid (patch_size x 8)
    "swin-ibot": ("swin_test_tiny", "ibot", "convnext", 4, 64, 32),
}


def _cfg(case, extra=()):
    arch, method, head, ps, g, l = CASES[case]
    return load_config(None, SMALL + [f"method={method}", f"model.arch={arch}", f"model.patch_size={ps}",
                                      f"hssl.heads=[{head}]", f"data.global_crop_size={g}",
                                      f"data.local_crop_size={l}"] + list(extra))


def _masks(cfg, B, rng):
    if cfg.method != "ibot":
        return None
    from jhssl.data.masking import MaskGenerator
    gen = MaskGenerator(mask_patch_size(cfg), pred_ratio=0.5, pred_shape="rand")
    return [jt.array(np.stack([gen(cfg.data.global_crop_size, rng, 0) for _ in range(B)])) for _ in range(2)]


def _train_steps(cfg, steps=3, B=4, seed=0):
    jt.set_global_seed(seed)
    m = build_model(cfg)
    opt = AdamW(param_groups(m.student), lr=1e-3, weight_decay=0.0)
    named = [(n, p) for n, p in m.student.named_parameters() if not p.is_stop_grad()]
    before = {n: p.numpy().copy() for n, p in named}
    rng = np.random.default_rng(seed)
    g, l = cfg.data.global_crop_size, cfg.data.local_crop_size
    losses = []
    for it in range(steps):
        crops = [jt.array(rng.normal(size=(B, 3, g, g)).astype(np.float32)) for _ in range(2)]
        crops += [jt.array(rng.normal(size=(B, 3, l, l)).astype(np.float32))
                  for _ in range(cfg.data.local_crops_number)]
        parts = m.compute_loss(crops, _masks(cfg, B, rng), 0)
        opt.step(parts["loss"])
        m.ema_update(0.99)
        losses.append(float(parts["loss"].item()))
    still = [n for n, p in named if np.array_equal(p.numpy(), before[n])]
    return m, losses, parts, still


@pytest.mark.parametrize("case", list(CASES))
def test_each_base_trains_with_its_method(case):
    cfg = _cfg(case)
    m, losses, parts, still = _train_steps(cfg)
    assert all(np.isfinite(losses)), losses
    assert not still, f"{case}: student parameters that did not move: {still}"
    expect = {"loss", "cls_base", "cls_head"} | ({"patch_base", "patch_head"} if cfg.method == "ibot" else set())
    assert set(parts) == expect
    if cfg.method == "ibot":
        assert "backbone.mask_token" in dict(m.student.named_parameters())


@pytest.mark.parametrize("case", ["resnet-dino", "pvt-dino"])
def test_baseline_twin_trains(case):
    _, losses, parts, still = _train_steps(_cfg(case, ["hssl=null"]), steps=2)
    assert all(np.isfinite(losses)) and not still and set(parts) == {"loss", "cls_base"}


def test_swin_masks_follow_the_last_stage_grid():
    cfg = _cfg("swin-ibot")
    assert mask_patch_size(cfg) == 4 * 8
    model = build_base_model(cfg)
    x = jt.randn(2, 3, 64, 64)
    mask = np.zeros((2, 2, 2), bool)
    mask[0, 0, 1] = True  # last-stage cell (0, 1) = patch-embedding cells rows 0-7, cols 8-15
    f = model.forward_features(x, mask=jt.array(mask))
    assert f["grid"] == (2, 2) and tuple(f["patch"].shape) == (2, 4, model.num_features)
    # the mask token enters exactly the 8x8 block of patch embeddings under the masked cell
    emb, _ = model.patch_embed(x)
    from models.swin import upsample_mask
    up = upsample_mask(jt.array(mask), emb.shape[1], emb.shape[2]).numpy()
    assert up.sum() == 64 and up[0, :8, 8:16].all() and not up[1].any()
    # image 1 (unmasked) is unchanged by the mask, image 0 changes
    plain = model.forward_features(x)["patch"].numpy()
    np.testing.assert_allclose(f["patch"].numpy()[1], plain[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(f["patch"].numpy()[0], plain[0])


@pytest.mark.parametrize("overrides,option,arch", [
    (["model.arch=resnet50", "method=dino", "model.img_size=224"], "img_size", "resnet50"),
    (["model.arch=pvt_v2_b2", "method=dino", "model.patch_size=8"], "patch_size", "pvt_v2_b2"),
    (["model.arch=resnet50", "method=ibot"], "use_mask_token", "resnet50"),
    (["model.arch=vit_small_patch8_224", "method=dino", "model.patch_size=16"], None, None),
])
def test_an_option_the_model_does_not_take_is_a_config_error(overrides, option, arch):
    cfg = load_config(None, overrides + ["data.global_crop_size=64"])
    if option is None:  # a timm name with its patch size in the name refuses another one
        with pytest.raises(ValueError, match="patch size 8"):
            build_base_model(cfg)
        return
    with pytest.raises(ConfigError, match=f"'{arch}'.*'{option}'"):
        check_base_model(cfg)


def test_models_declare_their_options():
    assert model_info("resnet50").options == frozenset({"drop_path_rate"})
    assert "use_mask_token" in model_info("resmlp_12_224").options
    assert model_info("swin_tiny").mask_patch_multiple == 8 and model_info("vit_small").mask_patch_multiple == 1
    # the real factories build with exactly what build_base_model passes them
    cfg = load_config(None, ["model.arch=resnet50", "method=dino", "data.global_crop_size=64"])
    assert isinstance(build_base_model(cfg), ResNet)


def test_swin_crop_not_divisible_by_mask_cells_is_a_config_error():
    cfg = load_config(None, ["model.arch=swin_tiny", "model.patch_size=4", "data.global_crop_size=48",
                             "method=ibot"])
    with pytest.raises(ConfigError, match="multiple of 32"):
        check_base_model(cfg)


def test_resnet_teacher_batchnorm_as_dino():
    """Issue 15: a BatchNorm base under the EMA teacher does what DINO's main_dino.py does. The
    teacher stays in train mode while training, so its BatchNorms normalise with the batch
    statistics of its own global crops and update their running statistics from them; the EMA moves
    the parameters only (``student.parameters()``), never the running statistics."""
    cfg = _cfg("resnet-dino")
    jt.set_global_seed(0)
    m = build_model(cfg)
    assert m.teacher.is_training()
    paired = {id(t) for _, t in m.param_pairs()}
    named = dict(m.teacher.named_parameters())
    buffers = [n for n in named if n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert buffers and not any(id(named[n]) in paired for n in buffers)
    assert {id(named["backbone.bn1.weight"]), id(named["backbone.bn1.bias"])} <= paired
    # one iteration: the teacher's stem BatchNorm sees the two global crops, batched together
    rng = np.random.default_rng(0)
    g, l = cfg.data.global_crop_size, cfg.data.local_crop_size
    crops = [jt.array(rng.normal(size=(4, 3, g, g)).astype(np.float32)) for _ in range(2)]
    crops.append(jt.array(rng.normal(size=(4, 3, l, l)).astype(np.float32)))
    t_bn, s_bn = m.teacher.backbone.bn1, m.student.backbone.bn1
    with jt.no_grad():
        stem = m.teacher.backbone.conv1(jt.concat(crops[:2], dim=0)).numpy()
    m.compute_loss(crops, None, 0)
    np.testing.assert_allclose(t_bn.running_mean.numpy(), 0.1 * stem.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(t_bn.running_var.numpy(), 0.9 + 0.1 * stem.var(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    assert int(t_bn.num_batches_tracked.numpy()[0]) == 1
    # the EMA: parameters move, the running statistics stay the teacher's own
    s_bn.weight.update(s_bn.weight + 1.0)
    before = {k: getattr(t_bn, k).numpy().copy() for k in ("weight", "running_mean", "running_var")}
    m.ema_update(0.5)
    np.testing.assert_allclose(t_bn.weight.numpy(), 0.5 * before["weight"] + 0.5 * s_bn.weight.numpy(), rtol=1e-6)
    for k in ("running_mean", "running_var"):
        np.testing.assert_array_equal(getattr(t_bn, k).numpy(), before[k])
        assert not np.allclose(getattr(s_bn, k).numpy(), before[k])  # the student's own statistics differ
