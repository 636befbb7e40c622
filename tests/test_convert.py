"""PyTorch <-> Jittor conversion: DINO/iBOT/MAE/timm/Swin layouts, the authors' Jittor HSSL checkpoints,
position-table resizing, strict key checks, damaged files and the safetensors reader/writer.

Models are tiny (2 blocks, 32 channels, 32 px) so the whole file runs in well under a minute on CPU.
"""
import argparse
import os
import sys

import numpy as np
import pytest

import jhssl  # noqa: F401  (sets Jittor's environment first)
from jhssl import convert, safetensors_io, weights_io

from tests._torch import F, needs_torch, require, torch, tref  # noqa: E402  (torch loads in the tests that use it)

import jittor as jt  # noqa: E402
import models  # noqa: E402
from models.heads import build_aux_head  # noqa: E402

VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
SWIN = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4)
TOL = 1e-4


def _randomize_torch(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def _torch_vit(seed=0, img_size=32):
    return _randomize_torch(tref.TorchViT(img_size, VIT["patch_size"], VIT["embed_dim"], VIT["depth"],
                                          VIT["num_heads"]), seed).eval()


def _torch_swin(seed=0):
    return _randomize_torch(tref.TorchSwin(patch=4, dim=SWIN["embed_dim"], depths=SWIN["depths"],
                                           heads=SWIN["num_heads"], window=SWIN["window_size"]), seed).eval()


def _image(seed=1, size=32):
    return np.random.RandomState(seed).randn(2, 3, size, size).astype(np.float32)


def _torch_sd(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _jt_features(model, img):
    model.eval()
    return model(jt.array(img)).numpy()


def _convert_and_load(tmp_path, obj_or_path, arch, **model_kwargs):
    src = obj_or_path
    if not isinstance(obj_or_path, str):
        src = str(tmp_path / "src.pth")
        torch.save(obj_or_path, src)
    out = str(tmp_path / "converted.pkl")
    sd, report = convert.convert_file(src, arch, out=out, strict=True, model_kwargs=model_kwargs)
    model = models.create_model(arch, **model_kwargs)
    # The written file (jt.save format) is what a user loads: read it back with jt.load.
    loaded = jt.load(out)
    convert.load_state_dict_checked(model, loaded, strict=True)
    return model, report


# ------------------------------------------------------------------------------------------------
# PyTorch -> Jittor


@needs_torch
def test_dino_full_checkpoint_to_jittor_gives_same_features(tmp_path):
    tv = _torch_vit()
    sd = {k: v.clone() for k, v in tv.state_dict().items()}
    # DINO full checkpoint layout: teacher under 'backbone.', student under DDP's 'module.backbone.',
    # projection heads, the training args.
    head = {"head.mlp.0.weight": torch.randn(64, 32), "head.last_layer.weight_g": torch.ones(1, 128)}
    ckpt = {"teacher": {**{"backbone." + k: v for k, v in sd.items()}, **head},
            "student": {"module.backbone." + k: v * 0 for k, v in sd.items()},
            "epoch": 100, "args": argparse.Namespace(arch="vit_small", patch_size=8),
            "dino_loss": {"center": torch.zeros(1, 128)}}
    model, report = _convert_and_load(tmp_path, ckpt, "vit_small", **VIT)
    img = _image()
    with torch.no_grad():
        ref = tv(torch.from_numpy(img))["cls"].numpy()
    diff = np.abs(_jt_features(model, img) - ref).max()
    assert diff < TOL, diff
    assert "head.mlp.0.weight" in report.dropped and report.clean
    assert any("teacher" in s for s in report.source)


@needs_torch
def test_ibot_state_dict_and_timm_heads_are_unwrapped_and_dropped(tmp_path):
    tv = _torch_vit(seed=3)
    sd = {k: v.clone() for k, v in tv.state_dict().items()}
    # iBOT's extract_backbone_weights output: {'state_dict': ...}; timm extras: classifier and fc_norm.
    obj = {"state_dict": {**sd, "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10),
                          "fc_norm.weight": torch.ones(32), "fc_norm.bias": torch.zeros(32)}}
    model, report = _convert_and_load(tmp_path, obj, "vit_small", **VIT)
    assert set(report.dropped) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    for k, v in sd.items():
        np.testing.assert_array_equal(model.state_dict()[k].numpy(), v.numpy())


@needs_torch
def test_mae_checkpoint_drops_decoder_and_its_mask_token(tmp_path):
    tv = _torch_vit(seed=4)
    sd = dict(tv.state_dict())
    obj = {"model": {**sd, "mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.zeros(16, 32),
                     "decoder_pos_embed": torch.zeros(1, 17, 16), "decoder_pred.bias": torch.zeros(192)}}
    _, report = _convert_and_load(tmp_path, obj, "vit_small", **VIT)
    assert report.dropped["mask_token"] == "MAE decoder"
    assert all(k in report.dropped for k in ("decoder_embed.weight", "decoder_pos_embed", "decoder_pred.bias"))


@needs_torch
def test_pos_embed_is_resized_bicubically_like_torch(tmp_path):
    tv = _torch_vit(seed=5, img_size=32)  # grid 4x4
    path = str(tmp_path / "vit32.pth")
    torch.save(tv.state_dict(), path)
    big = dict(VIT, img_size=48)            # grid 6x6
    model, report = _convert_and_load(tmp_path, path, "vit_small", **big)
    assert report.resized["pos_embed"] == ((1, 17, 32), (1, 37, 32))
    # The torch reference resamples its 4x4 table to the 6x6 input grid on the fly with
    # F.interpolate(bicubic): same function as the converted, statically resized table.
    img = _image(size=48)
    with torch.no_grad():
        ref = tv(torch.from_numpy(img))["cls"].numpy()
    assert np.abs(_jt_features(model, img) - ref).max() < TOL


@needs_torch
def test_resize_bicubic_matches_torch_interpolate():
    x = np.random.RandomState(0).randn(3, 7, 7).astype(np.float32)
    for size in [(13, 13), (4, 4), (5, 9)]:
        ref = F.interpolate(torch.from_numpy(x)[None], size=size, mode="bicubic", align_corners=False)[0].numpy()
        assert np.abs(convert.resize_bicubic(x, size) - ref).max() < 1e-5


def _old_swin_layout(sd, model):
    """The original Swin / iBOT layout: PatchMerging at the end of the previous stage, plus buffers."""
    old = {}
    for k, v in sd.items():
        if ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.downsample", f"layers.{i - 1}.downsample")
        old[k] = v
        if k.endswith("relative_position_bias_table"):
            old[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(16, 16).long()
    old["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    old["head.weight"] = torch.zeros(10, 32)
    return old


@needs_torch
def test_swin_torch_to_jittor_both_layouts_give_same_features(tmp_path):
    ts = _torch_swin(seed=6)
    sd = dict(ts.state_dict())
    img = _image(seed=2)
    with torch.no_grad():
        ref = ts(torch.from_numpy(img))["cls"].numpy()
    model, report = _convert_and_load(tmp_path, sd, "swin_tiny", **SWIN)
    assert report.clean and not report.dropped
    assert np.abs(_jt_features(model, img) - ref).max() < TOL
    # Original-Swin/iBOT layout: the downsample index shifts by one, buffers and head are dropped.
    model2, report2 = _convert_and_load(tmp_path, {"model": _old_swin_layout(sd, ts)}, "swin_tiny", **SWIN)
    assert report2.renamed["layers.0.downsample.reduction.weight"] == "layers.1.downsample.reduction.weight"
    assert "layers.0.blocks.1.attn_mask" in report2.dropped
    assert np.abs(_jt_features(model2, img) - ref).max() < TOL


@needs_torch
def test_swin_relative_position_table_is_resized_like_torch():
    table = np.random.RandomState(0).randn(49, 2).astype(np.float32)   # window 4: (2*4-1)^2
    out, report = convert.match_to_target({"layers.0.blocks.0.attn.relative_position_bias_table": table},
                                          {"layers.0.blocks.0.attn.relative_position_bias_table": (169, 2)})
    ref = F.interpolate(torch.from_numpy(table.T.reshape(1, 2, 7, 7).copy()), size=(13, 13), mode="bicubic",
                        align_corners=False)[0].reshape(2, 169).T.numpy()
    got = out["layers.0.blocks.0.attn.relative_position_bias_table"]
    assert got.shape == (169, 2) and np.abs(got - ref).max() < 1e-5
    assert report.resized


# ------------------------------------------------------------------------------------------------
# Jittor -> PyTorch (convert direction; run/export.py has its own tests)


@needs_torch
def test_jittor_vit_to_pth_loads_strictly_in_torch(tmp_path):
    jm = models.create_model("vit_small", **VIT)
    rng = np.random.RandomState(7)
    convert.load_state_dict_checked(jm, {k: (rng.randn(*v.shape) * 0.2).astype(np.float32)
                                         for k, v in jm.state_dict().items()})
    src = str(tmp_path / "ours.pkl")
    weights_io.save_jittor_pickle({k: v.numpy() for k, v in jm.state_dict().items()}, src)
    out = str(tmp_path / "ours.pth")
    convert.convert_file(src, "vit_small", out=out, strict=True, model_kwargs=VIT)
    tv = tref.TorchViT(32, 8, 32, 2, 2).eval()
    tv.load_state_dict(torch.load(out), strict=True)
    img = _image(seed=3)
    with torch.no_grad():
        ref = tv(torch.from_numpy(img))["cls"].numpy()
    assert np.abs(_jt_features(jm, img) - ref).max() < TOL


# ------------------------------------------------------------------------------------------------
# the authors' Jittor checkpoints (NK-JittorCV/Self-Supervised main_hssl.py)


def _authors_convnext_head(tokens, grid, p, depth):
    """The authors' auxiliary branch, written from their code's description in torch: ConvNext blocks
    on (B, C, H, W) (depthwise 7x7 conv, channel LayerNorm eps 1e-5, Linear-GELU-Linear; shortcut from
    the second block on), then the token mean and LayerNorm ``norm2`` (eps 1e-6)."""
    B, N, C = tokens.shape
    x = tokens.reshape(B, grid, grid, C).permute(0, 3, 1, 2)
    for i in range(depth):
        q = f"backbone.conv_blocks.{i}."
        y = F.conv2d(x, p[q + "dwconv.weight"], p[q + "dwconv.bias"], padding=3, groups=C)
        y = F.layer_norm(y.permute(0, 2, 3, 1), (C,), p[q + "norm.weight"], p[q + "norm.bias"], 1e-5)
        y = F.linear(F.gelu(F.linear(y, p[q + "pwconv1.weight"], p[q + "pwconv1.bias"])),
                     p[q + "pwconv2.weight"], p[q + "pwconv2.bias"]).permute(0, 3, 1, 2)
        x = y + x if i > 0 else y
    cls = x.mean(dim=(2, 3))
    return F.layer_norm(cls, (C,), p["backbone.norm2.weight"], p["backbone.norm2.bias"], 1e-6)


def _authors_checkpoint(path, depth=2):
    rng = np.random.RandomState(11)
    base = models.create_model("vit_small", **VIT)
    C = VIT["embed_dim"]
    teacher = {"backbone." + k: (rng.randn(*v.shape) * 0.2).astype(np.float32) for k, v in base.state_dict().items()}
    for i in range(depth):
        q = f"backbone.conv_blocks.{i}."
        for name, shape in (("dwconv.weight", (C, 1, 7, 7)), ("dwconv.bias", (C,)), ("norm.weight", (C,)),
                            ("norm.bias", (C,)), ("pwconv1.weight", (4 * C, C)), ("pwconv1.bias", (4 * C,)),
                            ("pwconv2.weight", (C, 4 * C)), ("pwconv2.bias", (C,))):
            teacher[q + name] = (rng.randn(*shape) * 0.2).astype(np.float32)
    teacher["backbone.norm2.weight"] = (1 + rng.randn(C) * 0.1).astype(np.float32)
    teacher["backbone.norm2.bias"] = (rng.randn(C) * 0.1).astype(np.float32)
    teacher["backbone.masked_embed"] = rng.randn(1, C).astype(np.float32)
    # HSSLHead: two DINOHead MLPs (Linear-GELU-Linear-GELU-Linear, hidden 64, bottleneck 8) and a
    # shared weight-normed last layer (out 16), visible under both of its names.
    for mlp in ("mlp", "mlp2"):
        for i, (o, n) in zip((0, 2, 4), ((64, C), (64, 64), (8, 64))):
            teacher[f"head.{mlp}.{i}.weight"] = (rng.randn(o, n) * 0.1).astype(np.float32)
            teacher[f"head.{mlp}.{i}.bias"] = (rng.randn(o) * 0.1).astype(np.float32)
    for name in ("last_layer", "last_layer2"):
        teacher[f"head.{name}.weight_g"] = np.ones((16, 1), np.float32)
        teacher[f"head.{name}.weight_v"] = rng.randn(16, 8).astype(np.float32)
    ckpt = {"student": {k: jt.array(v) for k, v in teacher.items()},
            "teacher": {k: jt.array(v) for k, v in teacher.items()},
            "optimizer": {"defaults": {"lr": 0.0}}, "epoch": 3,
            # Not a real arch name: the tiny test model has no timm reference to be checked against.
            "args": argparse.Namespace(arch="tiny_test_vit", patch_size=8, auxiliary_depth=depth),
            "pretrain_loss": {"center": jt.zeros((1, 16)), "center2": jt.zeros((1, 1, 16))}}
    jt.save(ckpt, path)  # the authors save with jt.save to checkpoint.pth.tar
    return teacher


@needs_torch
def test_authors_checkpoint_loads_into_vit_and_convnext_head(tmp_path):
    path = str(tmp_path / "checkpoint.pth.tar")
    depth = 2
    teacher = _authors_checkpoint(path, depth)
    out = str(tmp_path / "hssl.pkl")
    sd, report = convert.convert_file(path, "vit_small", out=out, aux_head="convnext", aux_depth=depth,
                                      model_kwargs=VIT)
    assert report.renamed["backbone.conv_blocks.1.pwconv1.weight"] == "aux_head.blocks.1.pwconv1.weight"
    assert report.renamed["backbone.norm2.weight"] == "aux_head.norm.weight"
    assert not report.missing
    # The authors' projection heads have no counterpart in the base+head model: reported, not loaded.
    assert "head.mlp.0.weight" in report.dropped
    np.testing.assert_array_equal(sd["backbone.mask_token"], teacher["backbone.masked_embed"].reshape(1, 1, -1))

    base = models.create_model("vit_small", use_mask_token=True, **VIT)
    head = build_aux_head("convnext", VIT["embed_dim"], depth=depth)
    loaded = jt.load(out)
    convert.load_state_dict_checked(base, {k[9:]: v for k, v in loaded.items() if k.startswith("backbone.")})
    convert.load_state_dict_checked(head, {k[9:]: v for k, v in loaded.items() if k.startswith("aux_head.")})
    base.eval()
    head.eval()
    img = _image(seed=4)
    feats = base.forward_features(jt.array(img))
    ours = head(feats["head_input"], feats["grid"])["cls"].numpy()
    p = {k: torch.from_numpy(v) for k, v in teacher.items()}
    ref = _authors_convnext_head(torch.from_numpy(feats["head_input"].numpy()), 4, p, depth).numpy()
    assert np.abs(ours - ref).max() < TOL


@needs_torch
def test_authors_checkpoint_loads_into_our_training_network_with_projections(tmp_path):
    from jhssl.methods.network import SSLNetwork
    path = str(tmp_path / "checkpoint.pth.tar")
    teacher = _authors_checkpoint(path)
    base = models.create_model("vit_small", use_mask_token=True, **VIT)
    net = SSLNetwork(base, build_aux_head("convnext", VIT["embed_dim"], depth=2), out_dim=16, patch_out_dim=16,
                     hidden_dim=64, bottleneck_dim=8, nlayers=3, norm_last_layer=False, shared_head=True,
                     use_patch=True)
    sd, report = convert.convert_state_dict(weights_io.load_checkpoint(path), convert.model_shapes(net),
                                            which="teacher")
    assert report.clean and set(sd) == set(net.state_dict())
    assert report.dropped == {"head.last_layer2.weight_g": "shared with head.last_layer",
                              "head.last_layer2.weight_v": "shared with head.last_layer"}
    convert.load_state_dict_checked(net, sd, strict=True)
    np.testing.assert_array_equal(net.state_dict()["aux_proj.mlp.4.weight"].numpy(), teacher["head.mlp2.4.weight"])
    np.testing.assert_array_equal(net.state_dict()["last_layer.weight_v"].numpy(), teacher["head.last_layer.weight_v"])


@needs_torch
def test_authors_checkpoint_exports_base_only(tmp_path):
    from jhssl import export
    path = str(tmp_path / "checkpoint.pth.tar")
    _authors_checkpoint(path)
    res = export.export_checkpoint(path, str(tmp_path / "base.safetensors"))
    assert not res["checked_against_timm"]
    sd = safetensors_io.load_file(res["out"])
    assert set(sd) == set(models.create_model("vit_small", **VIT).state_dict())
    assert "backbone.masked_embed" in res["report"].dropped or "backbone.mask_token" in res["report"].dropped


# ------------------------------------------------------------------------------------------------
# bad input


@needs_torch
def test_other_architecture_names_first_mismatching_key_and_shapes(tmp_path):
    path = str(tmp_path / "vit_dim32.pth")
    torch.save(_torch_vit().state_dict(), path)
    with pytest.raises(convert.ArchMismatchError) as e:
        convert.convert_file(path, "vit_small", model_kwargs=dict(VIT, embed_dim=48))
    msg = str(e.value)
    assert "'cls_token'" in msg and "[1, 1, 32]" in msg and "[1, 1, 48]" in msg
    spath = str(tmp_path / "swin.pth")
    torch.save(_torch_swin().state_dict(), spath)
    with pytest.raises(convert.ArchMismatchError, match=r"'patch_embed.proj.weight'.*\[16, 3, 4, 4\].*\[32, 3, 8, 8\]"):
        convert.convert_file(spath, "vit_small", model_kwargs=VIT)
    # A checkpoint sharing no key with the model (a ResNet here) is an error too, not an empty load.
    rpath = str(tmp_path / "resnet.pth")
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "bn1.weight": torch.ones(8)}, rpath)
    with pytest.raises(convert.ArchMismatchError, match="no key matches"):
        convert.convert_file(rpath, "vit_small", model_kwargs=VIT)


@needs_torch
def test_strict_fails_on_unexpected_and_missing_keys(tmp_path):
    sd = dict(_torch_vit().state_dict())
    sd["blocks.0.extra.weight"] = torch.zeros(3)
    del sd["norm.bias"]
    path = str(tmp_path / "odd.pth")
    torch.save(sd, path)
    _, report = convert.convert_file(path, "vit_small", model_kwargs=VIT)  # non-strict: reported
    assert report.unexpected == ["blocks.0.extra.weight"] and report.missing == ["norm.bias"]
    out = str(tmp_path / "odd.pkl")
    with pytest.raises(convert.StrictLoadError, match="blocks.0.extra.weight"):
        convert.convert_file(path, "vit_small", out=out, strict=True, model_kwargs=VIT)
    assert not os.path.exists(out)
    # The command line reports the same and exits non-zero.
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("run_convert_cli", os.path.join(root, "run", "convert.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = ["--src", path, "--arch", "vit_small", "--out", out, "--strict"] + \
        [f"--model-arg={k}={v}" for k, v in VIT.items()]
    assert cli.main(args) == 2 and not os.path.exists(out)


@pytest.mark.parametrize("kind", ["pth", "pkl", "safetensors"])
def test_truncated_file_is_a_clear_error_and_leaves_no_output(tmp_path, kind):
    if kind == "pth":
        torch.zeros(1)  # writing a .pth file needs torch (skipped only where torch is not required)
    rng = np.random.RandomState(0)
    sd = {k: rng.randn(*s).astype(np.float32)
          for k, s in convert.model_shapes(models.create_model("vit_small", **VIT)).items()}
    path = str(tmp_path / f"w.{kind}")
    if kind == "pth":
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    elif kind == "pkl":
        weights_io.save_jittor_pickle(sd, path)
    else:
        safetensors_io.save_file(sd, path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    out = str(tmp_path / "out.pkl")
    with pytest.raises(weights_io.CorruptFileError, match="truncated|corrupted"):
        convert.convert_file(path, "vit_small", out=out, model_kwargs=VIT)
    assert os.listdir(tmp_path) == [f"w.{kind}"]


def test_untrusted_pickle_globals_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    path = str(tmp_path / "evil.pkl")
    weights_io.save_jittor_pickle({"w": np.zeros(2), "x": Evil()}, path)
    with pytest.raises(weights_io.UnsafePickleError, match="builtins.print"):
        weights_io.load_checkpoint(path)
    # jt.save files of Vars, numpy arrays and Namespaces need no trust.
    jt.save({"a": jt.array([1.0, 2.0]), "args": argparse.Namespace(x=1)}, str(tmp_path / "ok.pkl"))
    obj = weights_io.load_checkpoint(str(tmp_path / "ok.pkl"))
    np.testing.assert_array_equal(obj["a"], [1.0, 2.0])
    assert obj["args"].x == 1


# ------------------------------------------------------------------------------------------------
# safetensors


def test_safetensors_round_trip_and_interop(tmp_path):
    rng = np.random.RandomState(0)
    tensors = {"f32": rng.randn(3, 4).astype(np.float32), "f16": rng.randn(5).astype(np.float16),
               "i64": np.arange(6, dtype=np.int64).reshape(2, 3), "u8": np.arange(7, dtype=np.uint8),
               "b": np.array([True, False]), "scalar": np.array(2.5, np.float64),
               "empty": np.zeros((0, 3), np.float32), "strided": rng.randn(4, 6).astype(np.float32)[:, ::2]}
    path = str(tmp_path / "t.safetensors")
    safetensors_io.save_file(tensors, path, metadata={"format": "timm"})
    back, meta = safetensors_io.load_file_with_metadata(path)
    assert meta == {"format": "timm"} and list(back) == list(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    assert n % 8 == 0  # header padded so the data is 8-byte aligned
    st = require("safetensors.numpy")  # the reference implementation (requirements-dev.txt)
    ref = st.load_file(path)  # the reference implementation reads our files...
    for k, v in tensors.items():
        np.testing.assert_array_equal(ref[k], v)
    other = str(tmp_path / "ref.safetensors")
    st.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, other)
    for k, v in safetensors_io.load_file(other).items():  # ...and we read its files
        np.testing.assert_array_equal(v, tensors[k])
    # bfloat16 (torch releases) widens exactly to float32.
    import safetensors.torch
    bf = torch.randn(4, 3).bfloat16()
    safetensors.torch.save_file({"w": bf}, str(tmp_path / "bf.safetensors"))
    np.testing.assert_array_equal(safetensors_io.load_file(str(tmp_path / "bf.safetensors"))["w"], bf.float().numpy())
