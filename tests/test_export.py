"""run/export.py / jhssl.export: base-only export of training checkpoints to timm, DINO and mmseg layouts.

The round trip (Jittor ViT/Swin -> export -> independent torch model -> same features) uses tiny
models; the timm key check builds a real ViT-S/16 and Swin-T (cheap: built, never run).
"""
import importlib.util
import os
import sys

import numpy as np
import pytest

import jhssl  # noqa: F401  (sets Jittor's environment first)
from jhssl import convert, export, safetensors_io, weights_io

from tests._torch import torch, tref  # noqa: E402  (imported by the first test that uses them)

import jittor as jt  # noqa: E402
import models  # noqa: E402
from jhssl.checkpoint import atomic_save  # noqa: E402
from models.heads import build_aux_head  # noqa: E402
from models.registry import list_models, model_info, options_taken, register_model  # noqa: E402
from tests.test_bases_other import TINY as TINY_BASES, _torch_pvt, _torch_resmlp, _torch_resnet  # noqa: E402
from tests.test_bases_other import _randomise as _randomise_bases  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
SWIN = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4)
TOL = 1e-4


def _randomize(module, seed):
    rng = np.random.RandomState(seed)
    convert.load_state_dict_checked(module, {k: (rng.randn(*v.shape) * 0.2).astype(np.float32)
                                             for k, v in module.state_dict().items()})
    return module


def _training_checkpoint(path, base, arch, model_cfg, seed=0, data_cfg=None):
    """A checkpoint as jhssl/checkpoint.py writes it: student/teacher with backbone.*, aux_head.*, proj_*."""
    head = _randomize(build_aux_head("convnext", base.num_features, depth=1), seed + 1)
    teacher = {"backbone." + k: v.numpy() for k, v in base.state_dict().items()}
    teacher.update({"aux_head." + k: v.numpy() for k, v in head.state_dict().items()})
    teacher["proj_base.mlp.0.weight"] = np.zeros((8, base.num_features), np.float32)
    teacher["proj_head.last_layer.weight"] = np.zeros((16, 8), np.float32)
    student = {k: v * 0 for k, v in teacher.items()}
    ckpt = {"student": student, "teacher": teacher, "optimizer": {"lr": 0.1}, "epoch": 1, "iteration": 10,
            "config": {"model": dict(arch=arch, **model_cfg), "data": dict(data_cfg or {})},
            "rng": {"numpy": np.random.get_state(), "python": __import__("random").getstate()}}
    atomic_save(ckpt, path)
    return teacher


def _tiny_vit_checkpoint(tmp_path, seed=0):
    base = _randomize(models.create_model("vit_small", use_mask_token=True, **VIT), seed)
    path = str(tmp_path / "checkpoint_00000010.pkl")
    _training_checkpoint(path, base, "tiny_test_vit", {"patch_size": 8, "img_size": 32}, seed)
    return base, path


def _load_cli(name):
    spec = importlib.util.spec_from_file_location(f"run_{name}_cli", os.path.join(ROOT, "run", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _image(seed=1, size=32):
    return np.random.RandomState(seed).randn(2, 3, size, size).astype(np.float32)


def test_vit_export_round_trip_through_torch_gives_same_features(tmp_path):
    base, path = _tiny_vit_checkpoint(tmp_path)
    out = str(tmp_path / "vit.pth")
    res = export.export_checkpoint(path, out)
    sd = torch.load(out)
    assert "mask_token" not in sd and not any(k.startswith(("aux_head", "proj_", "backbone.")) for k in sd)
    assert {"backbone.mask_token", "aux_head.norm.weight", "proj_base.mlp.0.weight"} <= set(res["report"].dropped)
    tv = tref.TorchViT(32, 8, 32, 2, 2).eval()
    tv.load_state_dict(sd, strict=True)
    img = _image()
    base.eval()
    with torch.no_grad():
        ref = tv(torch.from_numpy(img))
    ours = base.forward_features(jt.array(img))
    assert np.abs(ours["cls"].numpy() - ref["cls"].numpy()).max() < TOL
    assert np.abs(ours["patch"].numpy() - ref["patch"].numpy()).max() < TOL


def test_swin_export_round_trip_through_torch_gives_same_features(tmp_path):
    base = _randomize(models.create_model("swin_tiny", use_mask_token=True, **SWIN), 3)
    path = str(tmp_path / "swin.pkl")
    _training_checkpoint(path, base, "tiny_test_swin", {}, 3)
    out = str(tmp_path / "swin.safetensors")
    export.export_checkpoint(path, out, safetensors=True)
    import safetensors.torch
    ts = tref.TorchSwin(patch=4, dim=16, depths=(2, 2), heads=(2, 4), window=4).eval()
    ts.load_state_dict(safetensors.torch.load_file(out), strict=True)
    img = _image(seed=2)
    base.eval()
    with torch.no_grad():
        ref = ts(torch.from_numpy(img))["cls"].numpy()
    assert np.abs(base(jt.array(img)).numpy() - ref).max() < TOL


# A trainer's config records patch_size and img_size (null: data.global_crop_size) for every base.
TRAINER_MODEL_CFG = {"patch_size": 16, "img_size": None}


@pytest.mark.parametrize("arch,timm_name,kwargs", [
    ("vit_small", "vit_small_patch16_224", {"patch_size": 16}),
    ("swin_tiny", "swin_tiny_patch4_window7_224", {}),
    # bases without patch_size/img_size options (issue 15): the recorded values are not theirs
    ("resnet50", "resnet50", TRAINER_MODEL_CFG),
    ("pvt_v2_b2", "pvt_v2_b2", TRAINER_MODEL_CFG),
    ("resmlp_12_224", "resmlp_12_224", TRAINER_MODEL_CFG),
])
def test_timm_export_has_exactly_timms_keys_and_shapes(tmp_path, arch, timm_name, kwargs):
    ref = convert.timm_reference(timm_name)
    base = models.create_model(arch, **options_taken(arch, {"use_mask_token": True}))
    path = str(tmp_path / "ckpt.pkl")
    teacher = _training_checkpoint(path, base, arch, kwargs, data_cfg={"global_crop_size": 224})
    out = str(tmp_path / "w.safetensors")
    res = export.export_checkpoint(path, out, fmt="timm")
    assert res["checked_against_timm"] and res["timm_name"] == timm_name
    header, meta, _ = safetensors_io.read_header(out)
    assert set(header) == set(ref)
    assert all(tuple(header[k]["shape"]) == tuple(ref[k]) for k in ref)
    assert meta["format"] == "timm"
    sd = safetensors_io.load_file(out)
    last = [k for k in ref if k.endswith("weight")][-1]
    np.testing.assert_array_equal(sd[last], teacher["backbone." + last])


def _tiny_base_name(real):
    """``<real>_export_tiny``: a tiny ``real`` (TINY_BASES) registered with the real factory's declared options."""
    name = real + "_export_tiny"
    if name not in list_models():
        def factory(**kw):
            return models.create_model(real, **TINY_BASES[real], **kw)
        factory.__name__ = name
        register_model(factory, options=model_info(real).options)
    return name


@pytest.mark.parametrize("real,torch_features", [
    ("resnet50", lambda sd, img: _torch_resnet(sd, img, TINY_BASES["resnet50"]["layers"]).flatten(2).transpose(1, 2)),
    ("pvt_v2_b2", lambda sd, img: _torch_pvt(sd, img, TINY_BASES["pvt_v2_b2"])[1]),
    ("resmlp_12_224", lambda sd, img: _torch_resmlp(sd, img, TINY_BASES["resmlp_12_224"]["depth"])[1]),
], ids=["resnet", "pvt", "resmlp"])
def test_non_vit_trainer_checkpoint_exports_to_torch_and_converts_back(tmp_path, real, torch_features):
    """Issue 15: a trainer checkpoint of each non-ViT base (config with patch_size/img_size, which
    ResNet and PVT-v2 do not take) exports to a .pth that torch loads with the same features, and
    converts (also with its auxiliary head, as run/convert.py --aux-head does) back into the model."""
    arch = _tiny_base_name(real)
    base = models.create_model(arch)
    base.eval()
    _randomise_bases(base, 11)
    if real == "resnet50":
        base.bn1.num_batches_tracked.assign(jt.array(np.array([7], np.int64)))
    path = str(tmp_path / "ckpt.pkl")
    teacher = _training_checkpoint(path, base, arch, TRAINER_MODEL_CFG, seed=11, data_cfg={"global_crop_size": 64})
    assert export.infer_arch(weights_io.load_checkpoint(path)) == (
        arch, {"img_size": 64, "patch_size": 16} if model_info(real).takes("patch_size") else {})
    out = str(tmp_path / "base.pth")
    res = export.export_checkpoint(path, out)
    assert "img_size" not in res["note"]
    sd = torch.load(out)
    ours = base.state_dict()
    assert set(sd) == set(ours)
    for k, v in sd.items():  # torch layouts: BatchNorm's num_batches_tracked is 0-d there
        assert tuple(v.shape) == (() if k.endswith("num_batches_tracked") else tuple(ours[k].shape)), k
    if real == "resnet50":
        assert int(sd["bn1.num_batches_tracked"]) == 7
    img = np.random.default_rng(12).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = torch_features(sd, torch.from_numpy(img)).numpy()
    np.testing.assert_allclose(base.forward_features(jt.array(img))["patch"].numpy(), ref, rtol=1e-4, atol=1e-4)
    # back into Jittor: the exported .pth, and the training checkpoint with its auxiliary head
    back, report = convert.convert_file(out, arch, strict=True)
    assert report.clean and all(np.array_equal(back[k], v.numpy()) for k, v in ours.items())
    full, report = convert.convert_file(path, arch, which="teacher", aux_head="convnext", aux_depth=1, strict=True)
    assert set(full) == {k for k in teacher if not k.startswith("proj_")}
    np.testing.assert_array_equal(full["aux_head.norm.weight"], teacher["aux_head.norm.weight"])


@pytest.mark.parametrize("fmt", ["dino", "mmseg"])
def test_dino_and_mmseg_layouts(tmp_path, fmt):
    base, path = _tiny_vit_checkpoint(tmp_path, seed=5)
    out = str(tmp_path / f"{fmt}.pth")
    export.export_checkpoint(path, out, fmt=fmt, which="student")
    obj = torch.load(out)
    inner = obj["teacher"] if fmt == "dino" else obj["state_dict"]
    assert list(obj) == (["teacher"] if fmt == "dino" else ["state_dict"])
    assert set(inner) == {"backbone." + k for k in base.state_dict() if k != "mask_token"}
    # --which student: the student's weights (all zeros in this checkpoint), not the teacher's.
    assert float(inner["backbone.norm.weight"].abs().sum()) == 0.0
    # What we write, our converter reads back (DINO's loaders: checkpoint_key teacher, strip backbone.).
    sd, report = convert.convert_state_dict(weights_io.load_checkpoint(out), convert.model_shapes(base),
                                            optional=["mask_token"])
    assert report.clean and set(sd) == set(base.state_dict()) - {"mask_token"}


def test_pth_without_torch_says_so_and_safetensors_needs_none(tmp_path, monkeypatch):
    _, path = _tiny_vit_checkpoint(tmp_path, seed=6)
    monkeypatch.setattr(weights_io, "torch_available", lambda: False)
    out = str(tmp_path / "w.pth")
    with pytest.raises(weights_io.TorchMissingError, match="--safetensors"):
        export.export_checkpoint(path, out)
    assert not os.path.exists(out)
    res = export.export_checkpoint(path, out, safetensors=True)
    assert res["out"] == str(tmp_path / "w.safetensors") and os.path.isfile(res["out"])


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    _, path = _tiny_vit_checkpoint(tmp_path, seed=7)
    before = set(os.listdir(tmp_path))
    real_tobytes = np.ndarray.tobytes
    written = {"n": 0}

    class FailingArray(np.ndarray):
        def tobytes(self, *a, **k):  # the disk fills up after a few tensors
            written["n"] += 1
            if written["n"] > 3:
                raise OSError("disk full (simulated)")
            return real_tobytes(self, *a, **k)

    real_asarray = np.asarray
    monkeypatch.setattr(safetensors_io.np, "asarray",
                        lambda *a, **k: real_asarray(*a, **k).view(FailingArray))
    with pytest.raises(OSError, match="disk full"):
        export.export_checkpoint(path, str(tmp_path / "w.safetensors"))
    assert written["n"] > 3
    assert set(os.listdir(tmp_path)) == before  # neither the output nor a temporary file


def test_export_cli(tmp_path, capsys):
    _, path = _tiny_vit_checkpoint(tmp_path, seed=8)
    cli = _load_cli("export")
    out = str(tmp_path / "cli.safetensors")
    assert cli.main(["--checkpoint", path, "--out", out, "--safetensors", "--format", "mmseg"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert all(k.startswith("state_dict.backbone.") for k in safetensors_io.load_file(out))
    # A truncated checkpoint: a clear message, exit code 2, no output.
    data = open(path, "rb").read()
    bad = str(tmp_path / "bad.pkl")
    open(bad, "wb").write(data[:-100])
    out2 = str(tmp_path / "never.safetensors")
    assert cli.main(["--checkpoint", bad, "--out", out2, "--safetensors"]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err and not os.path.exists(out2)


def test_model_trained_at_low_resolution_exports_for_timm(tmp_path):
    base = models.create_model("vit_small", img_size=32, use_mask_token=True)  # 2x2 grid, e.g. a CPU demo run
    path = str(tmp_path / "ckpt.pkl")
    # A null model.img_size means data.global_crop_size to the trainer.
    teacher = _training_checkpoint(path, base, "vit_small", {"patch_size": 16, "img_size": None},
                                   data_cfg={"global_crop_size": 32})
    res = export.export_checkpoint(path, str(tmp_path / "a.safetensors"))
    assert res["checked_against_timm"] and "img_size=32" in res["note"]
    assert safetensors_io.load_file(res["out"])["pos_embed"].shape == (1, 5, 384)
    # --img-size 224 resamples the table: then every shape equals timm's 224-px model.
    res = export.export_checkpoint(path, str(tmp_path / "b.safetensors"), img_size=224)
    assert res["checked_against_timm"] and not res["note"]
    pe = safetensors_io.load_file(res["out"])["pos_embed"]
    assert pe.shape == (1, 197, 384)
    np.testing.assert_array_equal(pe[:, 0], teacher["backbone.pos_embed"][:, 0])  # the CLS position is kept


def test_timm_check_runs_for_other_patch_sizes_and_names_a_mismatch():
    """A CPU demo's ViT-T/4 at 32 px has no timm list of its own: it is checked against
    vit_tiny_patch16_224 (same keys; only the patch kernel and pos_embed length differ)."""
    ref = convert.timm_reference("vit_tiny_patch16_224")
    sd = {k: np.zeros(s, np.float32) for k, s in ref.items()}
    sd["patch_embed.proj.weight"] = np.zeros((192, 3, 4, 4), np.float32)
    sd["pos_embed"] = np.zeros((1, 65, 192), np.float32)
    name, note = export.check_against_timm(sd, "vit_tiny", {"patch_size": 4, "img_size": 32})
    assert name == "vit_tiny_patch16_224" and "patch_size=4" in note and "img_size=32" in note
    sd["blocks.0.mlp.fc1.weight"] = np.zeros((10, 192), np.float32)
    with pytest.raises(convert.ArchMismatchError, match="blocks.0.mlp.fc1.weight"):
        export.check_against_timm(sd, "vit_tiny", {"patch_size": 4, "img_size": 32})
    del sd["norm.weight"]
    with pytest.raises(convert.StrictLoadError, match="norm.weight"):
        export.check_against_timm(sd, "vit_tiny", {"patch_size": 4, "img_size": 32})
    assert export.check_against_timm(sd, None, {})[0] is None  # nothing recorded: said in the note
