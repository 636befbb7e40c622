"""Swin base model: timm 1.0 key layout, windows and shift masks, small inputs, masking, torch parity."""
import json
import math
import os
import sys

import numpy as np
import pytest

import jhssl  # noqa: F401
import jittor as jt

from models import create_model, list_models  # noqa: E402
from models import swin as swin_module  # noqa: E402,F401  (registers the Swin factories)
from models.swin import (PatchMerging, SwinTransformer, SwinTransformerBlock, WindowAttention,  # noqa: E402
                         shift_window_mask, window_partition, window_reverse)
from tests._torch import reference, torch  # noqa: E402  (torch loads only in the tests that use it)

from jhssl.timm_reference import reference_dir  # noqa: E402

REF_DIR = reference_dir()

SWINS = {"swin_tiny_patch4_window7_224": "swin_tiny_patch4_window7_224",
         "swin_small_patch4_window7_224": "swin_small_patch4_window7_224",
         "swin_base_patch4_window7_224": "swin_base_patch4_window7_224",
         "swin_tiny": "swin_tiny_patch4_window7_224", "swin_small": "swin_small_patch4_window7_224",
         "swin_base": "swin_base_patch4_window7_224"}


def load_reference(name):
    path = os.path.join(REF_DIR, f"{name}.json")
    if not os.path.exists(path):
        pytest.fail(f"timm reference {path} is missing (shipped in jhssl/reference/timm; JHSSL_TIMM_REFERENCE overrides the folder)")
    with open(path) as f:
        return json.load(f)


def tiny_swin(**kw):
    # the real geometry (patch 4, window 7, 4 stages) at toy width/depth
    cfg = dict(img_size=32, patch_size=4, embed_dim=8, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=7)
    cfg.update(kw)
    return SwinTransformer(**cfg)


def perturb(module, scale=0.1):
    """Make norms/biases non-trivial so parity tests exercise every parameter."""
    for p in module.state_dict().values():
        p.assign(p + jt.randn(p.shape) * scale)


@pytest.fixture(autouse=True)
def _seed():
    jt.set_global_seed(0)
    np.random.seed(0)
    if "torch" in sys.modules:
        torch.manual_seed(0)


@pytest.mark.parametrize("name", sorted(SWINS))
def test_swin_matches_timm_reference_keys_shapes_and_count(name):
    assert name in list_models()
    ref = load_reference(SWINS[name])
    model = create_model(name)
    ours = [(k, tuple(int(s) for s in v.shape)) for k, v in model.state_dict().items()]
    theirs = [(e["key"], tuple(e["shape"])) for e in ref["state_dict"]]
    assert ours == theirs, (f"missing: {sorted(set(theirs) - set(ours))[:5]}, "
                            f"extra: {sorted(set(ours) - set(theirs))[:5]}")
    assert sum(math.prod(s) for _, s in ours) == ref["num_parameters"]
    # derived constants stay out of the state dict, as in timm's reference
    assert not any("relative_position_index" in k or "attn_mask" in k for k, _ in ours)
    assert model.num_features == ref["state_dict"][-1]["shape"][0]
    jt.gc()


@pytest.mark.parametrize("size,grid", [(32, (1, 1)), (96, (3, 3)), (64, (2, 2))])
def test_forward_features_shapes_at_small_sizes(size, grid):
    model = tiny_swin()
    model.eval()
    out = model.forward_features(jt.randn(2, 3, size, size))
    n = grid[0] * grid[1]
    assert out["grid"] == grid
    assert tuple(out["patch"].shape) == (2, n, 64) and tuple(out["head_input"].shape) == (2, n, 64)
    assert tuple(out["cls"].shape) == (2, 64)
    np.testing.assert_allclose(out["cls"].numpy(), out["patch"].numpy().mean(1), atol=1e-5)
    np.testing.assert_allclose(model.norm(out["head_input"]).numpy(), out["patch"].numpy(), atol=1e-5)
    assert tuple(model(jt.randn(1, 3, size, size)).shape) == (1, 64)


def test_gradients_reach_every_parameter():
    model = tiny_swin(depths=(2, 2), num_heads=(1, 2), use_mask_token=True, drop_path_rate=0.1, img_size=64)
    model.train()
    mask = np.zeros((2, 16, 16), dtype=bool)
    mask[:, 3:6, 2:9] = True
    out = model.forward_features(jt.randn(2, 3, 64, 64), mask=jt.array(mask))
    loss = out["cls"].sqr().sum() + out["patch"].sqr().mean()
    names, params = zip(*model.state_dict().items())
    grads = jt.grad(loss, list(params))
    dead = [n for n, g in zip(names, grads) if not np.abs(g.numpy()).sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


def test_mask_token_replaces_exactly_the_masked_positions():
    # no blocks, one stage: head_input is exactly the (normed) patch embedding after masking
    model = tiny_swin(depths=(0,), num_heads=(1,), use_mask_token=True)
    model.mask_token.assign(jt.randn(1, 1, 8))
    x = jt.randn(2, 3, 32, 32)
    mask = np.random.rand(2, 8, 8) < 0.3
    plain = model.forward_features(x)["head_input"].numpy()
    masked = model.forward_features(x, mask=jt.array(mask))["head_input"].numpy()
    flat = mask.reshape(2, 64)
    np.testing.assert_array_equal(masked[~flat], plain[~flat])
    np.testing.assert_allclose(masked[flat], np.broadcast_to(model.mask_token.numpy()[0], (flat.sum(), 8)), atol=0)
    with pytest.raises(ValueError, match="use_mask_token"):
        tiny_swin().forward_features(x, mask=jt.array(mask))


def test_undivisible_input_size_is_a_value_error():
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        tiny_swin()(jt.randn(1, 3, 30, 32))


def test_window_partition_roundtrip_and_order():
    x = np.arange(2 * 6 * 4 * 3, dtype=np.float32).reshape(2, 6, 4, 3)
    win = window_partition(jt.array(x), (3, 2))
    assert tuple(win.shape) == (2 * 2 * 2, 6, 3)
    np.testing.assert_array_equal(win.numpy()[1], x[0, 0:3, 2:4].reshape(6, 3))  # second window: top row, right
    np.testing.assert_array_equal(window_reverse(win, (3, 2), 6, 4).numpy(), x)
    with pytest.raises(ValueError, match="multiple of the window"):
        window_partition(jt.array(x), 4)


@pytest.mark.parametrize("H,W,ws,shift", [(14, 14, 7, 3), (8, 8, 4, 2), (12, 8, 4, 2)])
def test_shift_window_mask_matches_reference(H, W, ws, shift):
    mask = shift_window_mask(H, W, ws, shift).numpy()
    ref = reference().torch_shift_mask(H, W, ws, ws, shift, shift).numpy()
    assert mask.shape == ((H // ws) * (W // ws), ws * ws, ws * ws)
    np.testing.assert_array_equal(mask, ref)
    assert (mask[0] == 0).all()  # top-left window holds one region only
    assert shift_window_mask(H, W, ws, 0) is None


def test_window_attention_with_mask_matches_per_window_computation():
    attn = WindowAttention(16, window_size=4, num_heads=2)
    perturb(attn)
    attn.eval()
    mask = shift_window_mask(8, 8, 4, 2)  # 4 windows
    x = jt.randn(2 * 4, 16, 16)
    batched = attn(x, mask=mask).numpy()
    # windows one by one, mask row of their own window: the head-folding must not mix windows or samples
    for i in range(8):
        single = attn(x[i:i + 1], mask=mask[i % 4:i % 4 + 1]).numpy()
        np.testing.assert_allclose(batched[i], single[0], atol=1e-5)


@pytest.mark.parametrize("H,W,shifted", [(14, 14, True), (10, 12, True), (5, 9, True), (7, 7, False)])
def test_swin_block_matches_independent_torch_reference(H, W, shifted):
    block = SwinTransformerBlock(16, num_heads=2, window_size=7, shifted=shifted)
    perturb(block)
    block.eval()
    tref = reference()
    ref = tref.TorchSwinBlock(16, 2, window=7, shifted=shifted)
    tref.copy_from_jittor(ref, block)
    x = np.random.randn(2, H, W, 16).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    diff = np.abs(block(jt.array(x)).numpy() - expected).max()
    assert diff < 1e-4, diff


def test_patch_merging_matches_reference_order():
    merge = PatchMerging(8)
    perturb(merge)
    tref = reference()
    ref = tref.TorchPatchMerging(8)
    tref.copy_from_jittor(ref, merge)
    for H, W in ((6, 4), (5, 3)):
        x = np.random.randn(2, H, W, 8).astype(np.float32)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x)).numpy()
        assert np.abs(merge(jt.array(x)).numpy() - expected).max() < 1e-4


@pytest.mark.parametrize("size", [32, 56])
def test_whole_swin_matches_torch_reference(size):
    model = tiny_swin(depths=(2, 2, 2), num_heads=(1, 2, 2), use_mask_token=True)
    perturb(model)
    model.eval()
    tref = reference()
    ref = tref.TorchSwin(4, 8, (2, 2, 2), (1, 2, 2), 7, mask_token=True)
    tref.copy_from_jittor(ref, model)
    x = np.random.randn(2, 3, size, size).astype(np.float32)
    mask = np.random.rand(2, size // 4, size // 4) < 0.4
    ours = model.forward_features(jt.array(x), mask=jt.array(mask))
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x), torch.from_numpy(mask))
    for key in ("cls", "patch", "head_input"):
        diff = np.abs(ours[key].numpy() - theirs[key].numpy()).max()
        assert diff < 1e-4, (key, diff)


def test_window_shrinks_and_unshifts_on_small_maps():
    block = SwinTransformerBlock(8, num_heads=1, window_size=7, shifted=True)
    assert block.window_and_shift(56, 56) == ((7, 7), (3, 3))
    assert block.window_and_shift(7, 7) == ((7, 7), (0, 0))
    assert block.window_and_shift(2, 9) == ((2, 7), (0, 3))
