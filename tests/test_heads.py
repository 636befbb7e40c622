"""HSSL auxiliary heads: shapes after every base, gradients, the first-shortcut formula (Sec. 3.6),
MultiAuxHead concatenation (Eq. 9), variable grids, and torch checks of the conv/pool branches."""
import numpy as np
import pytest

import jhssl  # noqa: F401  (bootstrap before jittor)
import jittor as jt

import models
from models.heads import HEAD_ARCHS, AuxHead, MultiAuxHead, avg_pool_same, build_aux_head

DIM = 32
HEAD_KW = dict(window_size=4, max_grid=8)  # small Swin windows / ResMLP build grid for 8x8 test grids

# Tiny bases, all with 32 output channels.
TINY_BASES = {
    "vit_tiny": (dict(patch_size=4, img_size=32, depth=2, embed_dim=DIM, num_heads=2), 32),
    "swin_tiny": (dict(img_size=64, embed_dim=4, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=2), 64),
    "resnet50": (dict(layers=(1, 1, 1, 1), channels=(4, 8, 8, 8), stem_width=8), 64),
    "resmlp_12_224": (dict(embed_dim=DIM, depth=1, img_size=64), 64),
    "pvt_v2_b2": (dict(embed_dims=(8, 16, 16, DIM), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2),
                       mlp_ratios=(2, 2, 2, 2)), 64),
}

# The last layer of each residual branch, per architecture: zeroing them makes every branch output 0.
LAST_LAYERS = {
    "convnext": ["pwconv2.weight", "pwconv2.bias"],
    "resnet": ["bn3.weight", "bn3.bias"],
    "resmlp": ["ls1", "ls2"],
    "poolformer": ["layer_scale1.scale", "layer_scale2.scale"],
    "vit": ["attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias"],
    "swin": ["attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias"],
}


def _tokens(B=2, grid=(8, 8), seed=0):
    rng = np.random.default_rng(seed)
    return jt.array(rng.normal(size=(B, grid[0] * grid[1], DIM)).astype(np.float32))


def _head(arch, **kw):
    jt.set_global_seed(0)
    return build_aux_head(arch, DIM, **{**HEAD_KW, **kw})


def _zero_branches(head):
    sd = head.state_dict()
    for key, var in sd.items():
        if any(key.endswith("." + suffix) for suffix in LAST_LAYERS[head.arch]):
            var.assign(jt.zeros(var.shape))


def test_registry_lists_every_head_and_rejects_unknown():
    assert HEAD_ARCHS == ("convnext", "resnet", "resmlp", "poolformer", "vit", "swin")
    with pytest.raises(ValueError, match="convnext, resnet, resmlp, poolformer, vit, swin"):
        build_aux_head("mlpmixer", DIM)
    with pytest.raises(ValueError, match="known heads"):
        build_aux_head(["convnext", "vitt"], DIM)
    with pytest.raises(ValueError, match="unknown head option"):
        build_aux_head("convnext", DIM, kernal_size=5)
    assert isinstance(build_aux_head("convnext", DIM, depth=1), AuxHead)
    assert isinstance(build_aux_head(["convnext"], DIM, depth=1), AuxHead)
    assert isinstance(build_aux_head(["convnext", "vit"], DIM, depth=1), MultiAuxHead)


def test_bad_token_shapes_are_clear_errors():
    head = _head("convnext", depth=1)
    with pytest.raises(ValueError, match="grid"):
        head(_tokens(grid=(4, 4)), (4, 5))
    with pytest.raises(ValueError, match="channels"):
        head(jt.randn(2, 16, DIM + 1), (4, 4))
    with pytest.raises(ValueError, match="larger"):
        _head("resmlp", depth=1)(_tokens(grid=(9, 8)), (9, 8))


@pytest.mark.parametrize("base", list(TINY_BASES))
def test_every_head_runs_after_every_base(base):
    kw, size = TINY_BASES[base]
    jt.set_global_seed(0)
    model = models.create_model(base, **kw)
    assert model.num_features == DIM
    feats = model.forward_features(jt.randn(2, 3, size, size))
    grid = feats["grid"]
    N = grid[0] * grid[1]
    for arch in HEAD_ARCHS:
        head = _head(arch, depth=2)
        out = head(feats["head_input"], grid)
        assert tuple(out["cls"].shape) == (2, DIM), (base, arch)
        assert tuple(out["patch"].shape) == (2, N, DIM), (base, arch)
        assert np.isfinite(out["patch"].numpy()).all(), (base, arch)


@pytest.mark.parametrize("arch", HEAD_ARCHS)
def test_gradients_reach_every_head_parameter(arch):
    head = _head(arch, depth=2)
    head.train()
    tokens = _tokens(grid=(8, 8))
    out = head(tokens, (8, 8))
    rng = np.random.default_rng(1)
    loss = (out["patch"] * jt.array(rng.normal(size=out["patch"].shape).astype(np.float32))).sum() \
        + (out["cls"] * jt.array(rng.normal(size=out["cls"].shape).astype(np.float32))).sum()
    named = [(n, p) for n, p in head.named_parameters() if p.requires_grad]
    grads = jt.grad(loss, [p for _, p in named])
    dead = [n for (n, _), g in zip(named, grads) if not np.any(g.numpy() != 0)]
    assert not dead, f"{arch}: parameters without gradient: {dead}"


@pytest.mark.parametrize("arch", HEAD_ARCHS)
def test_first_shortcut_with_zero_branches(arch):
    """Zero residual branches: with the first shortcut the head is the identity on z; without it
    the first block outputs F1(z) = 0 and every later block keeps 0 (paper Sec. 3.6)."""
    z = _tokens(grid=(8, 8))
    for first_shortcut, expected in ((True, z.numpy()), (False, np.zeros(z.shape, np.float32))):
        head = _head(arch, depth=3, first_shortcut=first_shortcut)
        head.eval()
        _zero_branches(head)
        got = head.forward_tokens(z, (8, 8)).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)
    # the public output is the final LayerNorm of concat[mean, tokens]; with the shortcut it is LN(z)
    head = _head(arch, depth=3, first_shortcut=True)
    head.eval()
    _zero_branches(head)
    out = head(z, (8, 8))
    zn = z.numpy()

    def ln(a):
        return (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out["patch"].numpy(), ln(zn), atol=1e-4)
    np.testing.assert_allclose(out["cls"].numpy(), ln(zn.mean(1)), atol=1e-4)


@pytest.mark.parametrize("arch", HEAD_ARCHS)
@pytest.mark.parametrize("first_shortcut", [False, True])
def test_two_block_head_equals_hand_composition(arch, first_shortcut):
    """Nonzero 2-block head == F1(z) + F2(F1(z)) built from the blocks' own branches."""
    head = _head(arch, depth=2, first_shortcut=first_shortcut)
    head.eval()
    z = _tokens(grid=(8, 8))
    x = z.reshape(2, 8, 8, DIM)
    b1, b2 = head.blocks[0], head.blocks[1]
    y = b1.mixer(x)
    if first_shortcut:
        y = x + y
    if b1.two_branch:
        y = y + b1.channel_mlp(y)
    out = y + b2.mixer(y)
    if b2.two_branch:
        out = out + b2.channel_mlp(out)
    got = head.forward_tokens(z, (8, 8)).numpy()
    np.testing.assert_allclose(got, out.reshape(2, 64, DIM).numpy(), rtol=1e-4, atol=1e-5)
    # the branches are not trivially zero, so the shortcut choice changes the output
    other = _head(arch, depth=2, first_shortcut=not first_shortcut)
    other.eval()
    assert not np.allclose(other.forward_tokens(z, (8, 8)).numpy(), got, atol=1e-3)


def test_multi_head_concatenates_in_order():
    multi = _head(["convnext", "resmlp", "vit"], depth=1)
    multi.eval()
    assert multi.out_dim == 3 * DIM and [h.arch for h in multi.heads] == ["convnext", "resmlp", "vit"]
    z = _tokens(grid=(8, 8))
    out = multi(z, (8, 8))
    assert tuple(out["cls"].shape) == (2, 3 * DIM) and tuple(out["patch"].shape) == (2, 64, 3 * DIM)
    for i, h in enumerate(multi.heads):
        single = h(z, (8, 8))
        np.testing.assert_allclose(out["cls"].numpy()[:, i * DIM:(i + 1) * DIM], single["cls"].numpy(), atol=1e-5)
        np.testing.assert_allclose(out["patch"].numpy()[..., i * DIM:(i + 1) * DIM], single["patch"].numpy(),
                                   atol=1e-5)
    # different architectures give different features: the blocks are not shared
    assert not np.allclose(out["cls"].numpy()[:, :DIM], out["cls"].numpy()[:, DIM:2 * DIM], atol=1e-3)


@pytest.mark.parametrize("arch", HEAD_ARCHS)
def test_one_head_runs_on_global_and_local_grids(arch):
    head = _head(arch, depth=2)
    head.eval()
    for grid in ((8, 8), (3, 3), (5, 7), (1, 1)):
        out = head(_tokens(grid=grid), grid)
        assert tuple(out["patch"].shape) == (2, grid[0] * grid[1], DIM)
        assert np.isfinite(out["patch"].numpy()).all()


def test_swin_head_shifts_odd_blocks_and_masks_padding():
    head = _head("swin", depth=3)
    assert [b.shift_size for b in head.blocks] == [0, 2, 0]
    head.eval()
    # Grids that are not window multiples are zero-padded; padding is masked as keys, so the (hidden)
    # pad value cannot change the output: run the mixers again with the pad filled with 5.0.
    import models.heads as H
    orig_pad = H.nn.pad
    for blk, grid in ((head.blocks[0], (6, 6)), (head.blocks[1], (5, 7))):
        x = _tokens(grid=grid).reshape(2, grid[0], grid[1], DIM)
        ref = blk.mixer(x).numpy()
        assert ref.shape == (2, grid[0], grid[1], DIM) and np.isfinite(ref).all()
        try:
            H.nn.pad = lambda v, p: orig_pad(v, p, value=5.0)
            noisy = blk.mixer(x).numpy()
        finally:
            H.nn.pad = orig_pad
        np.testing.assert_allclose(noisy, ref, atol=1e-5)


def test_head_cls_is_normed_mean_of_tokens():
    head = _head("convnext", depth=2)
    head.eval()
    head.norm.weight.assign(jt.array(np.linspace(0.5, 2.0, DIM).astype(np.float32)))
    head.norm.bias.assign(jt.array(np.linspace(-1, 1, DIM).astype(np.float32)))
    z = _tokens(grid=(4, 4))
    pre = head.forward_tokens(z, (4, 4))
    out = head(z, (4, 4))
    np.testing.assert_allclose(out["cls"].numpy(), head.norm(pre.mean(dim=1)).numpy(), atol=1e-5)
    np.testing.assert_allclose(out["patch"].numpy(), head.norm(pre).numpy(), atol=1e-5)


# ---- independent torch references of the conv / pool branches -------------------------------------
from tests._torch import F, torch  # noqa: E402  (imported by the first test that uses it)


def _t(v):
    return torch.from_numpy(np.ascontiguousarray(v.numpy()))


def test_convnext_branch_matches_torch():
    blk = _head("convnext", depth=1).blocks[0]
    x = _tokens(grid=(5, 6)).reshape(2, 5, 6, DIM)
    xt = _t(x).permute(0, 3, 1, 2)
    y = F.conv2d(xt, _t(blk.dwconv.weight), _t(blk.dwconv.bias), padding=3, groups=DIM).permute(0, 2, 3, 1)
    y = F.layer_norm(y, (DIM,), _t(blk.norm.weight), _t(blk.norm.bias), eps=1e-5)
    y = F.linear(F.gelu(F.linear(y, _t(blk.pwconv1.weight), _t(blk.pwconv1.bias))),
                 _t(blk.pwconv2.weight), _t(blk.pwconv2.bias))
    np.testing.assert_allclose(blk.mixer(x).numpy(), y.numpy(), rtol=1e-4, atol=1e-5)


def test_resnet_branch_matches_torch_in_eval():
    blk = _head("resnet", depth=1).blocks[0]
    blk.eval()
    rng = np.random.default_rng(3)
    for bn in (blk.bn1, blk.bn2, blk.bn3):
        c = bn.weight.shape[0]
        bn.running_mean.assign(jt.array(rng.normal(size=c).astype(np.float32)))
        bn.running_var.assign(jt.array(rng.uniform(0.5, 2, size=c).astype(np.float32)))
        bn.bias.assign(jt.array(rng.normal(size=c).astype(np.float32)))
    x = _tokens(grid=(5, 6)).reshape(2, 5, 6, DIM)
    y = _t(x).permute(0, 3, 1, 2)
    for conv, bn, act in ((blk.conv1, blk.bn1, True), (blk.conv2, blk.bn2, True), (blk.conv3, blk.bn3, False)):
        k = conv.weight.shape[-1]
        y = F.conv2d(y, _t(conv.weight), padding=k // 2)
        y = F.batch_norm(y, _t(bn.running_mean), _t(bn.running_var), _t(bn.weight), _t(bn.bias), eps=1e-5)
        y = F.relu(y) if act else y
    assert blk.conv1.weight.shape[0] == DIM // 4
    np.testing.assert_allclose(blk.mixer(x).numpy(), y.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)


def test_poolformer_pool_matches_torch():
    x = _tokens(grid=(3, 5)).reshape(2, 3, 5, DIM)
    ref = F.avg_pool2d(_t(x).permute(0, 3, 1, 2), 3, stride=1, padding=1, count_include_pad=False)
    np.testing.assert_allclose(avg_pool_same(x, 3).numpy(), ref.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)
    blk = _head("poolformer", depth=1).blocks[0]
    xt = _t(x).permute(0, 3, 1, 2)
    n = F.group_norm(xt, 1, _t(blk.norm1.weight), _t(blk.norm1.bias), eps=1e-5)
    mix = (F.avg_pool2d(n, 3, 1, 1, count_include_pad=False) - n) * _t(blk.layer_scale1.scale)[None, :, None, None]
    np.testing.assert_allclose(blk.mixer(x).numpy(), mix.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5)
