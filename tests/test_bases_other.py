"""ResNet-50, ResMLP-12/24 and PVT-v2-b2 bases: timm layouts, token interface, input checks."""
import json
import os

import numpy as np
import pytest

import jhssl  # noqa: F401  (bootstrap before jittor)
import jittor as jt

import models
from models.layers.residual import CrossPatchLinear

from jhssl.timm_reference import reference_dir  # noqa: E402

REF_DIR = reference_dir()

# Tiny configurations (all with 32 output channels) so forward passes stay fast on 2 CPU cores.
TINY = {
    "resnet50": dict(layers=(1, 1, 1, 1), channels=(4, 8, 8, 8), stem_width=8),
    "resmlp_12_224": dict(embed_dim=32, depth=2, img_size=64),
    "resmlp_24_224": dict(embed_dim=32, depth=2, img_size=64),
    "pvt_v2_b2": dict(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2),
                      mlp_ratios=(2, 2, 2, 2)),
}


def _reference(name):
    path = os.path.join(REF_DIR, f"{name}.json")
    if not os.path.exists(path):
        pytest.fail(f"timm reference {path} is missing (shipped in jhssl/reference/timm)")
    with open(path) as f:
        return json.load(f)


def _trainable_count(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["resnet50", "resmlp_12_224", "resmlp_24_224", "pvt_v2_b2"])
def test_keys_shapes_and_count_equal_timm(name):
    ref = _reference(name)
    model = models.create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # Jittor has no 0-d Vars: timm's scalar buffers (num_batches_tracked) are shape (1,) here.
    theirs = {e["key"]: tuple(e["shape"]) or (1,) for e in ref["state_dict"]}
    assert sorted(ours) == sorted(theirs)
    assert ours == theirs
    assert _trainable_count(model) == ref["num_parameters"]
    trainable = {k for k, v in model.state_dict().items() if v.requires_grad}
    assert trainable == {e["key"] for e in ref["state_dict"] if e["parameter"]}
    assert model.num_features == {"resnet50": 2048, "pvt_v2_b2": 512}.get(name, 384)


@pytest.mark.parametrize("name", list(TINY))
def test_forward_features_contract(name):
    jt.set_global_seed(0)
    model = models.create_model(name, **TINY[name])
    model.eval()
    if name.startswith("resmlp"):
        # the Affine final norm is the identity at init; make it visible
        model.norm.alpha.assign(jt.full(model.norm.alpha.shape, 2.0))
    x = jt.randn(2, 3, 64, 64)
    f = model.forward_features(x)
    H, W = f["grid"]
    assert isinstance(H, int) and isinstance(W, int)
    stride = 16 if name.startswith("resmlp") else 32
    assert (H, W) == (64 // stride, 64 // stride)
    C = model.num_features
    assert C == 32
    assert tuple(f["cls"].shape) == (2, C)
    assert tuple(f["patch"].shape) == (2, H * W, C)
    assert tuple(f["head_input"].shape) == (2, H * W, C)
    np.testing.assert_allclose(model(x).numpy(), f["cls"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f["cls"].numpy(), f["patch"].numpy().mean(1), rtol=1e-5, atol=1e-5)
    if name == "resnet50":
        # no final norm: the patch tokens are the head's input
        np.testing.assert_array_equal(f["patch"].numpy(), f["head_input"].numpy())
    else:
        final_norm = model.norm if name.startswith("resmlp") else model.stages[-1].norm
        np.testing.assert_allclose(final_norm(f["head_input"]).numpy(), f["patch"].numpy(), rtol=1e-5, atol=1e-5)
        assert not np.allclose(f["patch"].numpy(), f["head_input"].numpy())


def test_resnet_tokens_are_last_stage_row_major():
    model = models.create_model("resnet50", **TINY["resnet50"])
    model.eval()
    x = jt.randn(1, 3, 96, 64)
    fmap = model._stages(x).numpy()  # (1, C, 3, 2)
    f = model.forward_features(x)
    assert f["grid"] == (3, 2)
    tokens = f["patch"].numpy()
    np.testing.assert_allclose(tokens[0, 1 * 2 + 0], fmap[0, :, 1, 0], rtol=1e-6)
    np.testing.assert_allclose(tokens[0, 2 * 2 + 1], fmap[0, :, 2, 1], rtol=1e-6)


@pytest.mark.parametrize("name,bad", [("resnet50", 48), ("pvt_v2_b2", 80), ("resmlp_12_224", 40)])
def test_bad_input_size_is_a_clear_error(name, bad):
    model = models.create_model(name, **TINY[name])
    with pytest.raises(ValueError, match="divisible"):
        model(jt.randn(1, 3, bad, bad))


def test_resmlp_rejects_inputs_larger_than_built():
    model = models.create_model("resmlp_12_224", **TINY["resmlp_12_224"])  # built for 64 px
    with pytest.raises(ValueError, match="larger|cannot run"):
        model(jt.randn(1, 3, 80, 80))
    # smaller (local-crop) inputs run on the centred sub-grid of the cross-patch weight
    assert tuple(model.forward_features(jt.randn(1, 3, 32, 48))["patch"].shape) == (1, 6, 32)


def test_cross_patch_crop_equals_full_layer_on_zero_padded_grid():
    """On an h x w grid the layer equals the full layer applied with the tokens placed in the
    centred window of the build grid and zeros elsewhere, read back at those positions."""
    jt.set_global_seed(1)
    layer = CrossPatchLinear((5, 6))
    rng = np.random.default_rng(0)
    x_small = rng.normal(size=(2, 3 * 4, 7)).astype(np.float32)  # a 3x4 grid
    full = np.zeros((2, 5, 6, 7), np.float32)
    full[:, 1:4, 1:5] = x_small.reshape(2, 3, 4, 7)  # centred: rows (5-3)//2=1.., cols (6-4)//2=1..
    y_full = layer(jt.array(full.reshape(2, 30, 7)), (5, 6)).numpy().reshape(2, 5, 6, 7)
    y_small = layer(jt.array(x_small), (3, 4)).numpy()
    np.testing.assert_allclose(y_small, y_full[:, 1:4, 1:5].reshape(2, 12, 7), rtol=1e-5, atol=1e-5)
    # the full-grid path is W x + b along the token axis
    W, b = layer.weight.numpy(), layer.bias.numpy()
    xf = full.reshape(2, 30, 7)
    np.testing.assert_allclose(y_full.reshape(2, 30, 7), np.einsum("ij,bjc->bic", W, xf) + b[None, :, None],
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="larger"):
        layer(jt.randn(1, 36, 7), (6, 6))


def test_resnet_batchnorm_tracks_batches_and_syncs_by_default():
    model = models.create_model("resnet50", **TINY["resnet50"])
    model.train()
    model(jt.randn(2, 3, 32, 32)).sync()
    assert int(model.bn1.num_batches_tracked.numpy()[0]) == 1
    assert model.bn1.sync is True  # jittor's BatchNorm all-reduces batch statistics under MPI
    model.eval()
    model(jt.randn(2, 3, 32, 32)).sync()
    assert int(model.bn1.num_batches_tracked.numpy()[0]) == 1


@pytest.mark.parametrize("name", list(TINY)[:1] + ["resmlp_12_224", "pvt_v2_b2"])
def test_gradients_reach_every_base_parameter(name):
    jt.set_global_seed(2)
    kw = dict(TINY[name])
    if name == "resnet50":
        kw["zero_init_last"] = False  # zero bn3 gammas would block the gradient to conv1..conv3 at init
    model = models.create_model(name, **kw)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    x = jt.randn(2, 3, 64, 64)
    f = model.forward_features(x)
    w = jt.randn(f["patch"].shape)
    loss = (f["patch"] * w).sum() + (f["head_input"] * w).sum()
    grads = jt.grad(loss, params)
    dead = [n for (n, _), g in zip(named, grads) if not np.any(g.numpy() != 0)]
    assert not dead, f"parameters without gradient: {dead}"


# ---- independent torch references (functional, written from the papers' block definitions) --------
from tests._torch import F, torch  # noqa: E402  (imported by the first test that uses it)


def _state(model):
    return {k: torch.from_numpy(np.ascontiguousarray(v.numpy())) for k, v in model.state_dict().items()}


def _torch_pvt(sd, img, cfg):
    depths, heads, srs = cfg["depths"], cfg["num_heads"], (8, 4, 2, 1)

    def ln(x, pre, eps):
        return F.layer_norm(x, x.shape[-1:], sd[pre + ".weight"], sd[pre + ".bias"], eps)

    def embed(x, pre, k, s):
        y = F.conv2d(x, sd[pre + ".proj.weight"], sd[pre + ".proj.bias"], stride=s, padding=k // 2)
        B, C, H, W = y.shape
        return ln(y.flatten(2).transpose(1, 2), pre + ".norm", 1e-5), H, W

    x, H, W = embed(img, "patch_embed", 7, 4)
    for i in range(4):
        if i > 0:
            x, H, W = embed(fmap, f"stages.{i}.downsample", 3, 2)
        B, N, C = x.shape
        nh, d = heads[i], C // heads[i]
        for j in range(depths[i]):
            p = f"stages.{i}.blocks.{j}"
            h = ln(x, p + ".norm1", 1e-6)
            q = F.linear(h, sd[p + ".attn.q.weight"], sd[p + ".attn.q.bias"]).reshape(B, N, nh, d).transpose(1, 2)
            src = h
            if srs[i] > 1:
                m = F.conv2d(h.transpose(1, 2).reshape(B, C, H, W), sd[p + ".attn.sr.weight"],
                             sd[p + ".attn.sr.bias"], stride=srs[i])
                src = ln(m.flatten(2).transpose(1, 2), p + ".attn.norm", 1e-5)
            kv = F.linear(src, sd[p + ".attn.kv.weight"], sd[p + ".attn.kv.bias"])
            kv = kv.reshape(B, -1, 2, nh, d).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ kv[0].transpose(-1, -2) * d ** -0.5, dim=-1) @ kv[1]
            x = x + F.linear(a.transpose(1, 2).reshape(B, N, C), sd[p + ".attn.proj.weight"], sd[p + ".attn.proj.bias"])
            h = F.linear(ln(x, p + ".norm2", 1e-6), sd[p + ".mlp.fc1.weight"], sd[p + ".mlp.fc1.bias"])
            hid = h.shape[-1]
            h = F.conv2d(h.transpose(1, 2).reshape(B, hid, H, W), sd[p + ".mlp.dwconv.weight"],
                         sd[p + ".mlp.dwconv.bias"], padding=1, groups=hid)
            h = F.gelu(h.flatten(2).transpose(1, 2))
            x = x + F.linear(h, sd[p + ".mlp.fc2.weight"], sd[p + ".mlp.fc2.bias"])
        pre_norm = x
        x = ln(x, f"stages.{i}.norm", 1e-6)
        fmap = x.transpose(1, 2).reshape(B, C, H, W)
    return pre_norm, x


def _torch_resnet(sd, img, layers):
    def bn(x, pre):
        return F.batch_norm(x, sd[pre + ".running_mean"], sd[pre + ".running_var"], sd[pre + ".weight"],
                            sd[pre + ".bias"], eps=1e-5)

    x = F.relu(bn(F.conv2d(img, sd["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for s, n in enumerate(layers):
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            stride = 2 if (s > 0 and b == 0) else 1
            y = F.relu(bn(F.conv2d(x, sd[p + ".conv1.weight"]), p + ".bn1"))
            y = F.relu(bn(F.conv2d(y, sd[p + ".conv2.weight"], stride=stride, padding=1), p + ".bn2"))
            y = bn(F.conv2d(y, sd[p + ".conv3.weight"]), p + ".bn3")
            if p + ".downsample.0.weight" in sd:
                x = bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=stride), p + ".downsample.1")
            x = F.relu(x + y)
    return x


def _torch_resmlp(sd, img, depth):
    def aff(x, pre):
        return x * sd[pre + ".alpha"] + sd[pre + ".beta"]

    x = F.conv2d(img, sd["stem.proj.weight"], sd["stem.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    for j in range(depth):
        p = f"blocks.{j}"
        t = F.linear(aff(x, p + ".norm1").transpose(1, 2), sd[p + ".linear_tokens.weight"],
                     sd[p + ".linear_tokens.bias"]).transpose(1, 2)
        x = x + sd[p + ".ls1"] * t
        h = F.gelu(F.linear(aff(x, p + ".norm2"), sd[p + ".mlp_channels.fc1.weight"], sd[p + ".mlp_channels.fc1.bias"]))
        x = x + sd[p + ".ls2"] * F.linear(h, sd[p + ".mlp_channels.fc2.weight"], sd[p + ".mlp_channels.fc2.bias"])
    return x, aff(x, "norm")


def _randomise(model, seed):
    """Nonzero, non-default values everywhere (BN statistics, zero-initialised gammas, affine norms)."""
    rng = np.random.default_rng(seed)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.endswith("running_var"):
            v.assign(jt.array(rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32)))
        elif k.endswith(("bn3.weight", "alpha", "ls1", "ls2", "running_mean", "bias", "beta")):
            v.assign(jt.array((rng.normal(size=v.shape) * 0.1 + (1.0 if k.endswith("weight") else 0.0))
                              .astype(np.float32)))


def test_pvt_matches_torch_reference():
    cfg = TINY["pvt_v2_b2"]
    model = models.create_model("pvt_v2_b2", **cfg)
    model.eval()
    _randomise(model, 0)
    img = np.random.default_rng(1).normal(size=(2, 3, 64, 96)).astype(np.float32)
    f = model.forward_features(jt.array(img))
    pre, normed = _torch_pvt(_state(model), torch.from_numpy(img), cfg)
    assert f["grid"] == (2, 3)
    np.testing.assert_allclose(f["head_input"].numpy(), pre.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f["patch"].numpy(), normed.numpy(), rtol=1e-4, atol=1e-4)


def test_resnet_matches_torch_reference_in_eval():
    cfg = TINY["resnet50"]
    model = models.create_model("resnet50", **cfg)
    model.eval()
    _randomise(model, 2)
    img = np.random.default_rng(3).normal(size=(2, 3, 64, 64)).astype(np.float32)
    ref = _torch_resnet(_state(model), torch.from_numpy(img), cfg["layers"])
    tokens = ref.flatten(2).transpose(1, 2).numpy()
    f = model.forward_features(jt.array(img))
    np.testing.assert_allclose(f["patch"].numpy(), tokens, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model(jt.array(img)).numpy(), tokens.mean(1), rtol=1e-4, atol=1e-4)


def test_resmlp_matches_torch_reference():
    cfg = TINY["resmlp_12_224"]
    model = models.create_model("resmlp_12_224", **cfg)
    model.eval()
    _randomise(model, 4)
    img = np.random.default_rng(5).normal(size=(2, 3, 64, 64)).astype(np.float32)
    pre, normed = _torch_resmlp(_state(model), torch.from_numpy(img), cfg["depth"])
    f = model.forward_features(jt.array(img))
    np.testing.assert_allclose(f["head_input"].numpy(), pre.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f["patch"].numpy(), normed.numpy(), rtol=1e-4, atol=1e-4)
