"""Masked-token projection (jhssl.methods.masked_rows) against the full projection of every token.

With ``jhssl.perf.masked_projection`` on, the student projects only the masked patch tokens and the
teacher's prototype layer sees only those and one mean row. Loss, every student gradient and the
updated centers must equal the reference path (every token projected) to 1e-4.
"""
import numpy as np
import pytest

from _train_helpers import tiny_config

import jittor as jt  # noqa: E402  (jhssl bootstrap ran in _train_helpers)

from jhssl import perf
from jhssl.methods import build_model
from jhssl.methods.masked_rows import MaskedRows

TOL = 1e-4  # the fast-path tolerance of issue 7; gradients here reach ~1e3


def _inputs(cfg, seed=0, mask_ratio=0.3, B=None):
    rng = np.random.RandomState(seed)
    B = B or cfg.batch_size
    g, l_ = cfg.data.global_crop_size, cfg.data.local_crop_size
    crops = [rng.randn(B, 3, g, g).astype(np.float32) for _ in range(2)]
    crops += [rng.randn(B, 3, l_, l_).astype(np.float32) for _ in range(cfg.data.local_crops_number)]
    grid = g // cfg.model.patch_size
    masks = [rng.rand(B, grid, grid) < mask_ratio for _ in range(2)]
    if mask_ratio > 0:
        masks[0][1] = False  # an image without masked tokens (its term is 0)
    return crops, masks


def _step(method, crops, masks, masked):
    """Loss parts, student gradients (by name) and centers after one loss evaluation."""
    jt.set_seed(7)  # drop path draws the same paths both times
    with perf.masked_projection(masked):
        parts = method.compute_loss([jt.array(c) for c in crops], [jt.array(m) for m in masks], 1)
    named = [(n, p) for n, p in method.student.named_parameters() if not p.is_stop_grad()]
    grads = jt.grad(parts["loss"], [p for _, p in named])
    out = {k: v.numpy().copy() for k, v in parts.items()}
    out.update({"grad:" + n: g.numpy().copy() for (n, _), g in zip(named, grads)})
    for i, loss in enumerate(getattr(method, "bank", None) and method.bank.losses or [method.loss]):
        out[f"center{i}"] = loss.center.numpy().copy()
        if loss.center_patch is not None:
            out[f"center_patch{i}"] = loss.center_patch.numpy().copy()
    return out


def _assert_same_step(make_method, crops, masks):
    ref_method, fast_method = make_method(), make_method()
    fast_method.student.load_state_dict(ref_method.student.state_dict())
    fast_method.teacher.load_state_dict(ref_method.teacher.state_dict())
    ref = _step(ref_method, crops, masks, masked=False)
    fast = _step(fast_method, crops, masks, masked=True)
    assert set(ref) == set(fast)
    grads = [k for k in ref if k.startswith("grad:")]
    assert grads and any(np.abs(ref[k]).max() > 0 for k in grads)
    for k in ref:
        np.testing.assert_allclose(fast[k], ref[k], rtol=TOL, atol=TOL, err_msg=k)
    return ref


@pytest.mark.parametrize("extra", [
    [],                                           # HSSL, ConvNext head, patch terms from the teacher head
    ["hssl=null"],                                # iBOT baseline
    ["hssl.patch_level=base"],                    # the authors' code: base -> base patch term
    ["model.shared_last_layer=false", "model.shared_last_layer_teacher=false"],  # own patch prototypes
    ["model.use_bn_in_head=true"],                # BatchNorm in the projection: MLP on every token
])
def test_masked_projection_equals_full_projection(extra):
    cfg = tiny_config(extra=extra)
    crops, masks = _inputs(cfg)
    ref = _assert_same_step(lambda: build_model(cfg), crops, masks)
    assert any(k.startswith("patch_") for k in ref)


def test_masked_projection_with_no_masked_token():
    """Before iBOT's MIM start epoch the masks are empty: the patch term is exactly 0 both ways."""
    cfg = tiny_config()
    crops, masks = _inputs(cfg, mask_ratio=0.0)
    ref = _assert_same_step(lambda: build_model(cfg), crops, masks)
    assert ref["patch_base"].item() == 0.0 and ref["patch_head"].item() == 0.0


def test_masked_projection_in_the_search():
    from jhssl.search import build_search
    cfg = tiny_config(extra=["hssl.heads=[convnext,resmlp]"])
    crops, masks = _inputs(cfg, seed=2)
    _assert_same_step(lambda: build_search(cfg), crops, masks)


def test_masked_rows_weights_reproduce_the_ibot_average():
    rng = np.random.RandomState(4)
    masks = [rng.rand(3, 2, 3) < 0.5 for _ in range(2)]
    masks[1][2] = False
    rows = MaskedRows(masks)
    flat = np.concatenate([m.reshape(3, -1) for m in masks])
    np.testing.assert_array_equal(rows.index.numpy(), np.flatnonzero(flat))
    per_token = rng.rand(6, 6)  # any token losses
    ref = np.mean([((per_token[q * 3:(q + 1) * 3] * flat[q * 3:(q + 1) * 3]).sum(1)
                    / np.maximum(flat[q * 3:(q + 1) * 3].sum(1), 1)).mean() for q in range(2)])
    got = (per_token.reshape(-1)[rows.index.numpy()] * rows.weight.numpy()).sum()
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    x = jt.array(rng.randn(6, 6, 4).astype(np.float32))
    np.testing.assert_array_equal(rows.take(x).numpy(), x.numpy().reshape(36, 4)[np.flatnonzero(flat)])


def test_masked_rows_errors_name_the_mismatch():
    rows = MaskedRows([np.ones((2, 4), bool), np.zeros((2, 4), bool)])
    with pytest.raises(ValueError, match="2 global crops x 2 images x 4 tokens"):
        rows.check_tokens(jt.zeros((4, 9, 3)))
    with pytest.raises(ValueError, match="differ in shape"):
        MaskedRows([np.ones((2, 4), bool), np.ones((2, 5), bool)])


def test_torch_benchmark_twin_masked_projection_equals_full():
    """The PyTorch twin in benchmarks/ implements the same shortcut: one step both ways, same loss and gradients."""
    from tests._torch import require
    torch = require("torch")
    import copy
    from benchmarks.torch_models import TorchHSSL
    torch.manual_seed(0)
    full = TorchHSSL("vit_tiny", 4, 16, hssl=True, out_dim=64, hidden_dim=32, bottleneck_dim=16, nlayers=3,
                     n_local=1, head_depth=1, masked_projection=False)
    masked = copy.deepcopy(full)
    masked.masked_projection = True
    masked.opt = torch.optim.AdamW([p for p in masked.student.parameters() if p.requires_grad], lr=5e-4)
    g = torch.Generator().manual_seed(1)
    crops = [torch.randn(2, 3, 16, 16, generator=g) for _ in range(2)] + [torch.randn(2, 3, 8, 8, generator=g)]
    masks = [torch.rand(2, 4, 4, generator=g) < 0.3 for _ in range(2)]
    l_full, l_masked = full.step(crops, masks).item(), masked.step(crops, masks).item()
    assert abs(l_full - l_masked) <= 1e-5 * max(1.0, abs(l_full))
    compared = 0
    for (n, a), b in zip(full.student.named_parameters(), masked.student.parameters()):
        if a.grad is not None or b.grad is not None:  # the step leaves each parameter's gradient in .grad
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=n)
            compared += 1
    assert compared > 10
    torch.testing.assert_close(full.loss.center_patch, masked.loss.center_patch, rtol=1e-5, atol=1e-6)
