"""ViT base model: timm key layout, shapes, gradients, masking, resampled position embeddings, torch parity."""
import json
import math
import os
import sys

import numpy as np
import pytest

import jhssl  # noqa: F401
import jittor as jt

from models import create_model, list_models  # noqa: E402
from models import vit as vit_module  # noqa: E402,F401  (registers the ViT factories)
from models.layers import DropPath, drop_path, resample_abs_pos_embed  # noqa: E402
from models.vit import Attention, Block, VisionTransformer  # noqa: E402
from tests._torch import F, reference, torch  # noqa: E402  (torch loads only in the tests that use it)

from jhssl.timm_reference import reference_dir  # noqa: E402

REF_DIR = reference_dir()

TIMM_VITS = ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_small_patch8_224", "vit_base_patch16_224",
             "vit_base_patch8_224", "vit_large_patch16_224"]
# DINO-style names -> (kwargs, the timm reference they must equal)
DINO_VITS = {"vit_tiny": ({}, "vit_tiny_patch16_224"), "vit_small": ({}, "vit_small_patch16_224"),
             "vit_small/8": ({"patch_size": 8}, "vit_small_patch8_224"), "vit_base": ({}, "vit_base_patch16_224"),
             "vit_base/8": ({"patch_size": 8}, "vit_base_patch8_224"), "vit_large": ({}, "vit_large_patch16_224")}


def load_reference(name):
    path = os.path.join(REF_DIR, f"{name}.json")
    if not os.path.exists(path):
        pytest.fail(f"timm reference {path} is missing (shipped in jhssl/reference/timm; JHSSL_TIMM_REFERENCE overrides the folder)")
    with open(path) as f:
        return json.load(f)


def key_shapes(model):
    return [(k, tuple(int(s) for s in v.shape)) for k, v in model.state_dict().items()]


def assert_matches_reference(model, ref):
    ours = key_shapes(model)
    theirs = [(e["key"], tuple(e["shape"])) for e in ref["state_dict"]]
    assert ours == theirs, (f"missing: {sorted(set(theirs) - set(ours))[:5]}, "
                            f"extra: {sorted(set(ours) - set(theirs))[:5]}")
    assert sum(math.prod(s) for _, s in ours) == ref["num_parameters"]


def tiny_vit(**kw):
    cfg = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
    cfg.update(kw)
    return VisionTransformer(**cfg)


@pytest.fixture(autouse=True)
def _seed():
    jt.set_global_seed(0)
    np.random.seed(0)
    if "torch" in sys.modules:
        torch.manual_seed(0)


@pytest.mark.parametrize("name", TIMM_VITS)
def test_timm_named_vit_matches_reference_keys_shapes_and_count(name):
    assert name in list_models()
    model = create_model(name)
    assert_matches_reference(model, load_reference(name))
    jt.gc()


@pytest.mark.parametrize("name", sorted(DINO_VITS))
def test_dino_named_vit_matches_reference(name):
    kwargs, ref_name = DINO_VITS[name]
    model = create_model(name.split("/")[0], **kwargs)
    assert_matches_reference(model, load_reference(ref_name))
    jt.gc()


def test_mask_token_is_the_only_extra_key():
    plain = set(tiny_vit().state_dict())
    masked = tiny_vit(use_mask_token=True).state_dict()
    assert set(masked) - plain == {"mask_token"}
    assert tuple(masked["mask_token"].shape) == (1, 1, 32)


def test_layernorm_eps_and_init_follow_timm():
    model = tiny_vit()
    assert model.norm.eps == 1e-6 and model.blocks[0].norm1.eps == 1e-6
    pos = model.pos_embed.numpy()
    assert 0.01 < pos.std() < 0.03 and np.abs(pos).max() <= 2.0
    np.testing.assert_array_equal(model.blocks[0].attn.qkv.bias.numpy(), 0)


@pytest.mark.parametrize("patch,size", [(8, 32), (16, 32), (8, 48)])
def test_forward_features_shapes(patch, size):
    model = tiny_vit(patch_size=patch)
    model.eval()
    out = model.forward_features(jt.randn(2, 3, size, size))
    g = size // patch
    assert out["grid"] == (g, g)
    assert tuple(out["cls"].shape) == (2, 32)
    assert tuple(out["patch"].shape) == (2, g * g, 32)
    assert tuple(out["head_input"].shape) == (2, g * g, 32)
    assert model.num_features == 32 and model.patch_size == patch
    np.testing.assert_allclose(model(jt.randn(1, 3, size, size)).shape, (1, 32))
    # head_input is pre-norm: normalising it with the final norm gives `patch`
    np.testing.assert_allclose(model.norm(out["head_input"]).numpy(), out["patch"].numpy(), atol=1e-5)


def test_gradients_reach_every_parameter():
    model = tiny_vit(use_mask_token=True, drop_path_rate=0.1)
    model.train()
    mask = np.zeros((2, 4, 4), dtype=bool)
    mask[:, 1, 2] = mask[0, 3, 3] = True
    out = model.forward_features(jt.randn(2, 3, 32, 32), mask=jt.array(mask))
    loss = out["cls"].sqr().sum() + out["patch"].sqr().mean()
    names, params = zip(*model.state_dict().items())
    grads = jt.grad(loss, list(params))
    dead = [n for n, g in zip(names, grads) if not np.abs(g.numpy()).sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


def test_mask_token_replaces_exactly_the_masked_positions():
    # depth 0: head_input is exactly patch embedding (+mask) + position embedding
    model = tiny_vit(depth=0, use_mask_token=True)
    model.mask_token.assign(jt.randn(1, 1, 32))
    x = jt.randn(2, 3, 32, 32)
    mask = np.random.rand(2, 4, 4) < 0.4
    mask[0, 0, 0], mask[1, 0, 0] = True, False
    plain = model.forward_features(x)["head_input"].numpy()
    masked = model.forward_features(x, mask=jt.array(mask))["head_input"].numpy()
    flat = mask.reshape(2, 16)
    np.testing.assert_array_equal(masked[~flat], plain[~flat])
    expected = model.mask_token.numpy()[0, 0] + model.pos_embed.numpy()[0, 1:]  # (16, C)
    for b in range(2):
        np.testing.assert_allclose(masked[b][flat[b]], expected[flat[b]], atol=1e-6)
        assert not np.allclose(masked[b][flat[b]], plain[b][flat[b]])
    # (B, N) masks mean the same as (B, H, W)
    masked_flat = model.forward_features(x, mask=jt.array(flat))["head_input"].numpy()
    np.testing.assert_array_equal(masked_flat, masked)


def test_mask_errors_are_clear():
    model = tiny_vit(use_mask_token=True)
    x = jt.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="shape"):
        model.forward_features(x, mask=jt.array(np.zeros((2, 5, 5), dtype=bool)))
    with pytest.raises(ValueError, match="use_mask_token"):
        tiny_vit().forward_features(x, mask=jt.array(np.zeros((2, 16), dtype=bool)))


def test_undivisible_input_size_is_a_value_error():
    model = tiny_vit(patch_size=8)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model.forward_features(jt.randn(1, 3, 36, 32))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        VisionTransformer(img_size=225, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="channels"):
        model(jt.randn(1, 1, 32, 32))


def test_224px_vit_runs_on_96px_input_with_bicubic_position_embedding():
    model = create_model("vit_tiny_patch16_224")
    model.eval()
    out = model.forward_features(jt.randn(1, 3, 96, 96))
    assert out["grid"] == (6, 6) and tuple(out["patch"].shape) == (1, 36, 192)
    # the resampled embedding is torch's bicubic resize of the 14x14 grid, CLS untouched
    pe = model.pos_embed.numpy()
    ours = resample_abs_pos_embed(model.pos_embed, (6, 6), old_size=(14, 14)).numpy()
    grid = torch.from_numpy(pe[:, 1:]).reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, 192)
    np.testing.assert_array_equal(ours[:, 0], pe[:, 0])
    np.testing.assert_allclose(ours[:, 1:], ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("old,new", [((4, 4), (7, 5)), ((14, 14), (2, 2)), ((3, 5), (3, 5))])
def test_resample_abs_pos_embed_matches_torch_bicubic(old, new):
    pe = np.random.randn(1, 1 + old[0] * old[1], 8).astype(np.float32)
    ours = resample_abs_pos_embed(jt.array(pe), new, old_size=old).numpy()
    grid = torch.from_numpy(pe[:, 1:]).reshape(1, old[0], old[1], 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=new, mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, -1, 8)
    np.testing.assert_allclose(ours[:, 1:], ref.numpy(), atol=1e-5)
    np.testing.assert_array_equal(ours[:, 0], pe[:, 0])


def test_block_matches_independent_torch_reference():
    block = Block(32, num_heads=4)
    for p in block.state_dict().values():  # non-trivial norms and biases too
        p.assign(p + jt.randn(p.shape) * 0.1)
    block.eval()
    tref = reference()
    ref = tref.TorchViTBlock(32, 4)
    tref.copy_from_jittor(ref, block)
    x = np.random.randn(3, 17, 32).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    diff = np.abs(block(jt.array(x)).numpy() - expected).max()
    assert diff < 1e-4, diff


@pytest.mark.parametrize("size", [32, 48])
def test_whole_vit_matches_torch_reference_with_mask_and_resized_grid(size):
    model = tiny_vit(use_mask_token=True)
    model.mask_token.assign(jt.randn(1, 1, 32))
    model.eval()
    tref = reference()
    ref = tref.TorchViT(32, 8, 32, 2, 4, mask_token=True)
    tref.copy_from_jittor(ref, model)
    x = np.random.randn(2, 3, size, size).astype(np.float32)
    mask = np.random.rand(2, size // 8, size // 8) < 0.5
    ours = model.forward_features(jt.array(x), mask=jt.array(mask))
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x), torch.from_numpy(mask))
    for key in ("cls", "patch", "head_input"):
        diff = np.abs(ours[key].numpy() - theirs[key].numpy()).max()
        assert diff < 1e-4, (key, diff)


def test_drop_path_per_sample_and_linear_rule():
    x = jt.ones((4000, 3))
    y = drop_path(x, 0.25, training=True).numpy()
    kept = y[:, 0] != 0
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)  # rescaled by 1/keep_prob
    assert (y == y[:, :1]).all()  # whole sample dropped or kept
    layer = DropPath(0.5)
    layer.eval()
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())
    model = tiny_vit(depth=5, drop_path_rate=0.2)
    assert model.blocks[0].drop_path is None
    np.testing.assert_allclose([b.drop_path.drop_prob for b in model.blocks[1:]], [0.05, 0.1, 0.15, 0.2])


def test_attention_handles_b_n_c():
    attn = Attention(32, num_heads=4)
    assert tuple(attn(jt.randn(2, 5, 32)).shape) == (2, 5, 32)


@pytest.mark.skipif(bool(jt.flags.use_cuda), reason="checks the CPU (oneDNN) path")
def test_linear_layers_on_tokens_run_as_onednn_gemm():
    assert jt.compile_extern.mkl_ops is not None, "Jittor's oneDNN ops are not available (see run/setup.sh)"
    block = Block(32, num_heads=4)
    block.eval()
    x = jt.randn(2, 9, 32)
    block(x).sync()
    with jt.profile_scope() as report:
        block(x).sync()
    gemms = sum(int(row[2]) for row in report[1:] if row[0].startswith("mkl_matmul"))
    assert gemms == 4  # qkv, proj, fc1, fc2: each a oneDNN GEMM, not a broadcast-multiply-reduce
