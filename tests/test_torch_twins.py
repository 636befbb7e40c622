"""The torch twins of the MoCo v3 and MAE training steps (benchmarks/torch_models.py) compute what the
Jittor methods compute: with the Jittor network's weights copied in by key and the same inputs (the
same masks), the loss and the gradient of every trained parameter agree, and the same parameters
are trained. benchmarks/run.py counts each method's FLOPs on these twins, so this is what makes its
HSSL / baseline FLOP ratios the methods' own."""
import os

import numpy as np
import pytest

# Jittor and torch in one process, both on GNU OpenMP: with threads spin-waiting at barriers (the
# default) while the other framework's threads hold the cores, Jittor's first step takes ~30x longer
# on a shared machine (benchmarks/run.py sets the same for its workers). Read when OpenMP loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from jhssl import bootstrap  # noqa: F401,E402  (before jittor)
import jittor as jt  # noqa: E402

from tests._torch import require

IMG, PATCH, BATCH = 16, 4, 4  # a 4x4 patch grid


def _config(method, hssl, extra=()):
    from jhssl.config import load_config
    overrides = [f"method={method}", "model.arch=vit_tiny", f"model.patch_size={PATCH}",
                 f"data.global_crop_size={IMG}", f"batch_size={BATCH}", "model.drop_path_rate=0.0"]
    # depth 2: the first head block (no shortcut) and a later one (with its shortcut)
    overrides += ["hssl.heads=[convnext]", "hssl.depth=2"] if hssl else ["hssl=null"]
    return load_config(None, overrides + list(extra))


def _inputs(method):
    """The benchmark's own inputs (benchmarks.run._ssl_inputs): the views and masks the method declares."""
    from benchmarks.run import _ssl_inputs
    from jhssl.methods.registry import method_spec
    spec = dict(batch=BATCH, local=8, n_local=0, patch=PATCH)
    spec["global"] = IMG
    return _ssl_inputs(spec, np, method_spec(method).views)


def _trained_jittor(net):
    return {n: p for n, p in net.named_parameters() if not p.is_stop_grad()}


def _assert_same_step(jt_net, jt_loss, twin_net, twin_loss):
    """Loss to 1e-4 (relative); the same trained parameters, each with the same gradient."""
    assert abs(twin_loss.item() - jt_loss.item()) <= 1e-4 * max(1.0, abs(jt_loss.item())), \
        (twin_loss.item(), jt_loss.item())
    jt_params = _trained_jittor(jt_net)
    twin_params = {n: p for n, p in twin_net.named_parameters() if p.requires_grad}
    assert sorted(twin_params) == sorted(jt_params)
    twin_loss.backward()
    want = dict(zip(jt_params, (g.numpy() for g in jt.grad(jt_loss, list(jt_params.values())))))
    # each gradient to 1e-3 of its norm (float32 through 12 blocks and BatchNorms of 4 samples), plus
    # noise relative to the largest gradient: some are zero but for rounding (a bias a BatchNorm removes)
    scale = max(float(np.linalg.norm(g)) for g in want.values())
    assert scale > 0
    for name, g in want.items():
        got = twin_params[name].grad
        got = np.zeros_like(g) if got is None else got.numpy()
        err = float(np.linalg.norm(got - g))
        assert err <= 1e-3 * float(np.linalg.norm(g)) + 1e-6 * scale, (name, err, float(np.linalg.norm(g)))


@pytest.mark.parametrize("hssl", [False, True])
def test_mocov3_twin_computes_the_jittor_step(hssl):
    require("torch")
    from tests.torch_reference import copy_from_jittor, to_torch
    from jhssl.methods import build_model
    from benchmarks.torch_models import TorchMoCoV3
    cfg = _config("mocov3", hssl, ["mocov3.proj_hidden_dim=32", "mocov3.proj_dim=16", "mocov3.pred_hidden_dim=24"])
    jt.set_global_seed(0)
    method = build_model(cfg)
    twin = TorchMoCoV3.from_config(cfg)
    # the momentum network differs from the online one, so a key taken from the wrong network shows
    for p in method.teacher.parameters():
        p.update(p * 0.9)
    copy_from_jittor(twin.student, method.student, torch_only=("num_batches_tracked",))
    copy_from_jittor(twin.teacher, method.teacher, torch_only=("num_batches_tracked",))
    crops, _ = _inputs("mocov3")
    jt_loss = method.compute_loss([jt.array(c) for c in crops], None, 0)["loss"]
    twin_loss = twin.loss([to_torch(c) for c in crops])
    _assert_same_step(method.student, jt_loss, twin.student, twin_loss)
    assert not any(p.requires_grad for p in twin.student.backbone.patch_embed.parameters())  # frozen, as configured


@pytest.mark.parametrize("hssl", [False, True])
def test_mae_twin_computes_the_jittor_step(hssl):
    require("torch")
    from tests.torch_reference import copy_from_jittor, to_torch
    from jhssl.methods import build_model
    from benchmarks.torch_models import TorchMAE
    cfg = _config("mae", hssl, ["mae.decoder_embed_dim=32", "mae.decoder_depth=1", "mae.decoder_num_heads=2"])
    jt.set_global_seed(0)
    method = build_model(cfg)
    twin = TorchMAE.from_config(cfg)
    # zero-initialised tokens would hide a mask token put at the wrong positions
    for name, p in method.student.named_parameters():
        if name.endswith("mask_token"):
            p.update(jt.randn(p.shape))
    copy_from_jittor(twin.net, method.student)
    crops, masks = _inputs("mae")
    assert masks[0].reshape(BATCH, -1).sum(1).tolist() == [12] * BATCH  # 75 % of 16 patches
    jt_loss = method.compute_loss([jt.array(crops[0])], [masks[0]], 0)["loss"]
    twin_loss = twin.loss(to_torch(crops[0]), to_torch(masks[0]))
    _assert_same_step(method.student, jt_loss, twin.net, twin_loss)


def test_twins_refuse_what_they_do_not_model():
    require("torch")
    from benchmarks.torch_models import TorchMAE, TorchMoCoV3
    with pytest.raises(ValueError, match="hssl.heads=\\['resnet'\\]"):
        TorchMAE.from_config(_config("mae", False, ["hssl.heads=[resnet]"]))
    with pytest.raises(ValueError, match="no MFF fusion"):
        TorchMAE.from_config(_config("mae", False, ["mae.fusion_layers=[5,11]"]))
    with pytest.raises(ValueError, match="in-batch negatives only"):
        TorchMoCoV3.from_config(_config("mocov3", False, ["mocov3.negatives=queue", f"mocov3.queue_size={BATCH}"]))
