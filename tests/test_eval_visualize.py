"""Visualisation: CLS attention equals the hand-computed softmax row; PNG sizes; HSSL head PCA."""
import os

import numpy as np
from PIL import Image

from _eval_helpers import run_tool, tiny_checkpoint
from _train_helpers import register_tiny_vit


def _manual_last_cls_attention(vit, x):
    """The last block's CLS-query softmax row, from the weights with numpy (LayerNorm, qkv, scale)."""
    import jittor as jt
    with jt.no_grad():
        tokens, _ = vit.prepare_tokens(jt.array(x))
        for blk in list(vit.blocks)[:-1]:
            tokens = blk(tokens)
        t = tokens.numpy().astype(np.float64)
    blk = vit.blocks[len(vit.blocks) - 1]
    g, b = blk.norm1.weight.numpy(), blk.norm1.bias.numpy()
    mu, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
    y = (t - mu) / np.sqrt(var + 1e-6) * g + b
    qkv = y @ blk.attn.qkv.weight.numpy().T.astype(np.float64) + blk.attn.qkv.bias.numpy()
    B, N, _ = qkv.shape
    H, hd = blk.attn.num_heads, blk.attn.head_dim
    q = qkv[..., :H * hd].reshape(B, N, H, hd).transpose(0, 2, 1, 3)
    k = qkv[..., H * hd:2 * H * hd].reshape(B, N, H, hd).transpose(0, 2, 1, 3)
    logits = (q[:, :, 0:1] @ k.transpose(0, 1, 3, 2))[:, :, 0] / np.sqrt(hd)  # (B, H, N)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def test_attention_map_is_the_cls_softmax_row():
    import jittor as jt
    from jhssl.eval.visualize import cls_attention_maps
    models = register_tiny_vit()
    jt.set_global_seed(1)
    vit = models.create_model("vit_test_tiny", patch_size=4, img_size=16)
    vit.eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 20)).astype(np.float32)  # a 4 x 5 patch grid
    maps = cls_attention_maps(vit, x)
    ref = _manual_last_cls_attention(vit, x)
    assert maps.shape == (2, 2, 4, 5)
    np.testing.assert_allclose(maps, ref[:, :, 1:].reshape(2, 2, 4, 5), rtol=1e-4, atol=1e-6)
    assert np.all(maps.sum(axis=(2, 3)) < 1.0)  # the rest of the row is the CLS token's own weight


def test_visualize_writes_images_of_expected_size(tmp_path, capsys):
    path, root = tiny_checkpoint(tmp_path)
    imgs = []
    for i, size in enumerate([(30, 20), (16, 40)]):
        p = str(tmp_path / f"im{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3)).astype(np.uint8)).save(p)
        imgs.append(p)
    tool = run_tool("visualize")
    out = str(tmp_path / "vis")
    assert tool.main(["--checkpoint", path, "--images", *imgs, "--output-dir", out, "--size", "18"]) == 0
    side = 16  # 18 rounded down to a multiple of the patch size 4
    for i in range(2):
        att = Image.open(os.path.join(out, f"im{i}_attention.png"))
        assert att.size == (side * 3, side)   # image + one map per head (2 heads)
        pca = Image.open(os.path.join(out, f"im{i}_pca.png"))
        assert pca.size == (side * 3, side)   # image + base PCA + auxiliary-head PCA
        arr = np.asarray(pca)
        assert arr[:, side:].std() > 0        # the PCA panels are not blank
    assert tool.main(["--checkpoint", path, "--images", str(tmp_path / "missing.png")]) == 2
    assert "image not found" in capsys.readouterr().err


def test_pca_rgb_components_are_scaled():
    from jhssl.eval.visualize import pca_rgb
    rng = np.random.default_rng(0)
    toks = [rng.normal(size=(3, 4, 8)), rng.normal(size=(2, 2, 8))]
    out = pca_rgb(toks)
    assert out[0].shape == (3, 4, 3) and out[1].shape == (2, 2, 3)
    allv = np.concatenate([o.reshape(-1, 3) for o in out])
    np.testing.assert_allclose(allv.min(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(allv.max(0), 1.0, atol=1e-12)


def test_bases_without_cls_token_get_a_clear_message():
    import pytest
    from jhssl.eval.visualize import cls_attention_maps

    class SwinLike:
        pass
    with pytest.raises(NotImplementedError, match="has no CLS token"):
        cls_attention_maps(SwinLike(), np.zeros((1, 3, 16, 16), np.float32))
