"""HSSL / DINO / iBOT losses against independent numpy computations; EMA; schedules; no teacher grads."""
import numpy as np
import pytest

from _train_helpers import tiny_config

import jittor as jt  # noqa: E402  (jhssl bootstrap ran in _train_helpers)

from jhssl.methods import SelfDistillationLoss, build_model
from jhssl.schedules import cosine_scheduler, teacher_temp_schedule


# ----------------------------------------------------------------------------- numpy reference
def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _L(p_teacher, s_logits, Ts):
    """Eq. 2 per row: -sum_i p_i log softmax(s / Ts)_i."""
    return -(p_teacher * _log_softmax(s_logits / Ts)).sum(-1)


def numpy_hssl(s_cls, s_patch, t_cls, t_patch, masks, center, center_p, Tt, Ttp, Ts, n_g, n_crops, l1, l2):
    B = t_cls.shape[0] // n_g
    p = _softmax((t_cls - center) / Tt)
    pp = _softmax((t_patch - center_p) / Ttp)
    out, total = {}, 0.0
    for name, s in s_cls.items():  # cross-view: teacher view q, student view v != q
        terms = [_L(p[q * B:(q + 1) * B], s[v * B:(v + 1) * B], Ts).mean()
                 for q in range(n_g) for v in range(n_crops) if v != q]
        out["cls_" + name] = np.mean(terms)
        total += l1 * out["cls_" + name]
    for name, s in s_patch.items():  # same view, masked tokens only
        terms = []
        for q in range(n_g):
            m = masks[q].reshape(B, -1).astype(np.float64)
            tok = _L(pp[q * B:(q + 1) * B], s[q * B:(q + 1) * B], Ts)
            terms.append(((tok * m).sum(1) / np.maximum(m.sum(1), 1)).mean())
        out["patch_" + name] = np.mean(terms)
        total += l2 * out["patch_" + name]
    out["loss"] = total
    return out


def _fixed_inputs(seed=0, B=3, K=7, N=4, n_g=2, n_l=2):
    rng = np.random.default_rng(seed)
    n_crops = n_g + n_l
    d = dict(
        s_cls={"base": rng.normal(size=(n_crops * B, K)), "head": rng.normal(size=(n_crops * B, K))},
        s_patch={"base": rng.normal(size=(n_g * B, N, K)), "head": rng.normal(size=(n_g * B, N, K))},
        t_cls=rng.normal(size=(n_g * B, K)), t_patch=rng.normal(size=(n_g * B, N, K)),
        masks=[rng.random((B, 2, 2)) < 0.5 for _ in range(n_g)],
        center=rng.normal(size=(1, K)) * 0.3, center_p=rng.normal(size=(1, 1, K)) * 0.3)
    d["masks"][0][0] = False  # an image without masked tokens: its term is 0 (clamp to 1)
    return d


def _jt(d):
    return {k: jt.array(v.astype(np.float32)) for k, v in d.items()}


def _loss_module(K, n_l=2, epochs=5, **kw):
    return SelfDistillationLoss(K, K, n_global=2, n_local=n_l, epochs=epochs, warmup_teacher_temp=0.04,
                                teacher_temp=0.07, warmup_teacher_patch_temp=0.05, teacher_patch_temp=0.08,
                                warmup_teacher_temp_epochs=3, student_temp=0.1, lambda1=1.0, lambda2=0.5, **kw)


@pytest.mark.parametrize("epoch", [0, 2])
def test_hssl_loss_matches_numpy_eqs_1_2(epoch):
    d = _fixed_inputs()
    K = d["t_cls"].shape[1]
    L = _loss_module(K)
    L.center.update(jt.array(d["center"].astype(np.float32)))
    L.center_patch.update(jt.array(d["center_p"].astype(np.float32)))
    out = L(_jt(d["s_cls"]), _jt(d["s_patch"]), jt.array(d["t_cls"].astype(np.float32)),
            jt.array(d["t_patch"].astype(np.float32)), [jt.array(m) for m in d["masks"]], epoch)
    Tt = np.linspace(0.04, 0.07, 3)[epoch]
    Ttp = np.linspace(0.05, 0.08, 3)[epoch]
    ref = numpy_hssl(d["s_cls"], d["s_patch"], d["t_cls"], d["t_patch"], d["masks"], d["center"],
                     d["center_p"], Tt, Ttp, 0.1, 2, 4, 1.0, 0.5)
    assert set(out) == set(ref)
    for k in ref:
        np.testing.assert_allclose(out[k].item(), ref[k], rtol=2e-5, atol=2e-5, err_msg=k)


def test_hssl_loss_gradients_are_the_same_with_the_fused_cpu_kernels():
    """The fused softmax / soft cross-entropy ops (fast kernels) against Jittor's plain ops: every
    term and the gradient of the total with respect to each student output, to 1e-4."""
    from jhssl import perf
    d = _fixed_inputs()
    K = d["t_cls"].shape[1]

    def terms_and_grads():
        L = _loss_module(K)
        L.center.update(jt.array(d["center"].astype(np.float32)))
        L.center_patch.update(jt.array(d["center_p"].astype(np.float32)))
        s_cls, s_patch = _jt(d["s_cls"]), _jt(d["s_patch"])
        out = L(s_cls, s_patch, jt.array(d["t_cls"].astype(np.float32)),
                jt.array(d["t_patch"].astype(np.float32)), [jt.array(m) for m in d["masks"]], 1)
        grads = jt.grad(out["loss"], list(s_cls.values()) + list(s_patch.values()))
        return {k: v.item() for k, v in out.items()}, [g.numpy() for g in grads]

    with perf.fast_kernels(True):
        terms_fast, grads_fast = terms_and_grads()
    with perf.fast_kernels(False):
        terms_ref, grads_ref = terms_and_grads()
    assert terms_fast.keys() == terms_ref.keys()
    for k in terms_ref:
        np.testing.assert_allclose(terms_fast[k], terms_ref[k], rtol=1e-4, atol=1e-4, err_msg=k)
    for gf, gr in zip(grads_fast, grads_ref):
        assert np.abs(gr).max() > 0
        np.testing.assert_allclose(gf, gr, rtol=1e-4, atol=1e-4)


def test_centers_update_with_momentum_over_teacher_targets():
    d = _fixed_inputs(1)
    K = d["t_cls"].shape[1]
    L = _loss_module(K)
    L.center.update(jt.array(d["center"].astype(np.float32)))
    L.center_patch.update(jt.array(d["center_p"].astype(np.float32)))
    L(_jt(d["s_cls"]), _jt(d["s_patch"]), jt.array(d["t_cls"].astype(np.float32)),
      jt.array(d["t_patch"].astype(np.float32)), [jt.array(m) for m in d["masks"]], 0)
    want = 0.9 * d["center"] + 0.1 * d["t_cls"].mean(0, keepdims=True)
    want_p = 0.9 * d["center_p"] + 0.1 * d["t_patch"].mean(1).mean(0)[None, None]
    np.testing.assert_allclose(L.center.numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(L.center_patch.numpy(), want_p, rtol=1e-5, atol=1e-6)


def test_baseline_and_hssl_differ_exactly_by_head_terms():
    d = _fixed_inputs(2)
    K = d["t_cls"].shape[1]
    args = lambda s_cls, s_patch: (_jt(s_cls), _jt(s_patch), jt.array(d["t_cls"].astype(np.float32)),  # noqa: E731
                                   jt.array(d["t_patch"].astype(np.float32)), [jt.array(m) for m in d["masks"]], 1)
    hssl = _loss_module(K)(*args(d["s_cls"], d["s_patch"]))
    base = _loss_module(K)(*args({"base": d["s_cls"]["base"]}, {"base": d["s_patch"]["base"]}))
    assert set(base) == {"cls_base", "patch_base", "loss"}
    np.testing.assert_allclose(hssl["cls_base"].item(), base["cls_base"].item(), rtol=1e-6)
    diff = hssl["loss"].item() - base["loss"].item()
    head_terms = 1.0 * hssl["cls_head"].item() + 0.5 * hssl["patch_head"].item()
    np.testing.assert_allclose(diff, head_terms, rtol=1e-5, atol=1e-5)
    assert head_terms > 0


def test_dino_loss_has_no_patch_terms_and_matches_numpy():
    d = _fixed_inputs(3)
    K = d["t_cls"].shape[1]
    L = SelfDistillationLoss(K, K, n_global=2, n_local=2, epochs=3, warmup_teacher_temp=0.04,
                             teacher_temp=0.04, warmup_teacher_temp_epochs=0, use_patch=False)
    out = L(_jt({"base": d["s_cls"]["base"]}), {}, jt.array(d["t_cls"].astype(np.float32)), None, None, 0)
    ref = numpy_hssl({"base": d["s_cls"]["base"]}, {}, d["t_cls"], d["t_patch"], d["masks"], np.zeros((1, K)),
                     np.zeros((1, 1, K)), 0.04, 0.04, 0.1, 2, 4, 1.0, 1.0)
    assert set(out) == {"cls_base", "loss"}
    np.testing.assert_allclose(out["loss"].item(), ref["loss"], rtol=2e-5)


def test_method_wires_teacher_head_as_target():
    """HSSL: teacher head CLS supervises student base + head; baseline: base -> base."""
    cfg = tiny_config()
    m = build_model(cfg)
    assert m.cls_target == "head_cls" and m.cls_students == ["base", "head"]
    assert m.patch_target == "head_patch" and m.patch_students == ["base", "head"]
    mb = build_model(tiny_config(extra=["hssl=null"]))
    assert mb.cls_target == "base_cls" and mb.cls_students == ["base"]
    assert mb.patch_target == "base_patch" and mb.patch_students == ["base"]
    assert not hasattr(mb.student, "aux_proj") and mb.student.aux_head is None
    ma = build_model(tiny_config(extra=["hssl.patch_level=base"]))  # the authors' code
    assert ma.patch_target == "base_patch" and ma.patch_students == ["base"] and ma.cls_target == "head_cls"
    md = build_model(tiny_config(method="dino"))
    assert md.patch_target is None and md.cls_target == "head_cls"


def test_projection_sharing_options_change_the_parameters():
    sep = build_model(tiny_config()).student.state_dict()
    assert any(k.startswith("aux_proj.mlp.") for k in sep) and any(k.startswith("aux_last_layer.") for k in sep)
    shared = build_model(tiny_config(extra=["hssl.separate_proj=false", "hssl.shared_prototypes=true"]))
    keys = shared.student.state_dict()
    assert not any(k.startswith("aux_proj.") or k.startswith("aux_last_layer") for k in keys)
    assert "last_layer.weight_v" in keys and "last_layer.weight_g" in keys


# ----------------------------------------------------------------------------- EMA, schedules
def test_ema_formula():
    m = build_model(tiny_config())
    pairs = m.param_pairs()
    # every trained student parameter (DINO: parameters, not buffers); the teacher holds them all
    assert len(pairs) == len([p for p in m.student.parameters() if not p.is_stop_grad()])
    rng = np.random.default_rng(0)
    before = []
    for s, t in pairs:
        s.update(jt.array(rng.normal(size=s.shape).astype(np.float32)))
        t.update(jt.array(rng.normal(size=t.shape).astype(np.float32)).stop_grad())
        before.append((s.numpy().copy(), t.numpy().copy()))
    m.ema_update(0.9)
    for (s, t), (s0, t0) in zip(pairs, before):
        np.testing.assert_allclose(t.numpy(), 0.9 * t0 + 0.1 * s0, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(s.numpy(), s0)


def test_schedule_end_points():
    lr = cosine_scheduler(1e-3, 1e-6, epochs=10, niter_per_ep=5, warmup_epochs=2)
    assert len(lr) == 50
    assert lr[0] == 0.0 and abs(lr[9] - 1e-3) < 1e-12      # warm-up ends at the base value
    # DINO's cosine: the last of n values sits one step short of the final value
    last_gap = lambda base, final, n: abs(base - final) * (1 - np.cos(np.pi / n)) / 2 + 1e-12  # noqa: E731
    assert abs(lr[10] - 1e-3) < 1e-12 and abs(lr[-1] - 1e-6) <= last_gap(1e-3, 1e-6, 40)
    assert np.all(np.diff(lr[10:]) <= 0)
    wd = cosine_scheduler(0.04, 0.4, 10, 5)
    assert abs(wd[0] - 0.04) < 1e-12 and abs(wd[-1] - 0.4) <= last_gap(0.04, 0.4, 50) and np.all(np.diff(wd) >= 0)
    mom = cosine_scheduler(0.996, 1.0, 10, 5)
    assert abs(mom[0] - 0.996) < 1e-12 and 1.0 - last_gap(0.996, 1.0, 50) <= mom[-1] <= 1.0
    tt = teacher_temp_schedule(0.04, 0.07, 3, 10)
    assert tt[0] == 0.04 and abs(tt[2] - 0.07) < 1e-12 and np.all(tt[2:] == 0.07)
    tp = teacher_temp_schedule(0.04, 0.07, 3, 10, start_epoch=2)  # iBOT: held until the MIM start
    assert list(tp[:3]) == [0.04, 0.04, 0.04] and abs(tp[4] - 0.07) < 1e-12


def test_teacher_gets_no_gradient():
    from jhssl.optim import AdamW, param_groups
    m = build_model(tiny_config())
    opt = AdamW(param_groups(m.student), lr=1e-2)
    teacher_ids = {id(p) for p in m.teacher.parameters()}
    assert all(p.is_stop_grad() for p in m.teacher.parameters())
    assert not teacher_ids & {id(p) for g in opt.param_groups for p in g["params"]}
    before = {k: v.numpy().copy() for k, v in m.teacher.state_dict().items()}
    rng = np.random.default_rng(0)
    crops = [jt.array(rng.normal(size=(2, 3, 16, 16)).astype(np.float32)) for _ in range(2)] + \
            [jt.array(rng.normal(size=(2, 3, 8, 8)).astype(np.float32))]
    masks = [jt.array(rng.random((2, 4, 4)) < 0.5) for _ in range(2)]
    loss = m.compute_loss(crops, masks, 0)["loss"]
    teacher_params = list(m.teacher.parameters())
    grads = jt.grad(loss, teacher_params[:4])
    for g in grads:
        assert float(jt.abs(g).sum().item()) == 0.0
    s_before = m.student.backbone.patch_embed.proj.weight.numpy().copy()
    opt.step(loss)
    for k, v in m.teacher.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)
    assert not np.allclose(m.student.backbone.patch_embed.proj.weight.numpy(), s_before)


def test_weight_norm_last_layer_is_unit_norm_and_g_fixed():
    m = build_model(tiny_config(extra=["model.norm_last_layer=true"]))
    ll = m.student.last_layer
    assert ll.weight_g.is_stop_grad()
    w = ll.weight().numpy()
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-5)
    m2 = build_model(tiny_config(extra=["model.norm_last_layer=false"]))
    assert not m2.student.last_layer.weight_g.is_stop_grad()


# ----------------------------------------------------------------------------- optimizer pieces
def _lin_problem(seed=0):
    from jittor import nn
    jt.set_global_seed(seed)
    lin = nn.Linear(6, 4)
    x = jt.array(np.random.default_rng(seed).normal(size=(8, 6)).astype(np.float32))
    return lin, x


def test_gradient_accumulation_matches_one_big_step():
    from jhssl.optim import AdamW, param_groups
    lin_a, x = _lin_problem()
    lin_b, _ = _lin_problem()
    for pa, pb in zip(lin_a.parameters(), lin_b.parameters()):
        pb.update(pa.detach().clone())
    opt_a = AdamW(param_groups(lin_a), lr=0.1, weight_decay=0.05)
    opt_b = AdamW(param_groups(lin_b), lr=0.1, weight_decay=0.05)
    loss = lambda lin, xs: (lin(xs) ** 2).mean()  # noqa: E731
    opt_a.backward(loss(lin_a, x))
    opt_a.step()
    for half in (x[:4], x[4:]):  # two micro-batches, each loss / accum
        opt_b.backward(loss(lin_b, half) / 2)
    opt_b.step()
    assert opt_b.updates == 1
    np.testing.assert_allclose(lin_a.weight.numpy(), lin_b.weight.numpy(), rtol=1e-5, atol=1e-6)


def test_frozen_parameters_are_not_touched_and_clip_is_per_parameter():
    from jhssl.optim import AdamW, clip_gradients, param_groups
    lin, x = _lin_problem(1)
    opt = AdamW(param_groups(lin), lr=0.1, weight_decay=0.5)
    opt.frozen = {id(lin.weight)}
    w0, b0 = lin.weight.numpy().copy(), lin.bias.numpy().copy()
    opt.backward((lin(x) * 100).sum())
    clip_gradients(opt, 0.5)
    norms = [float(jt.sqrt((g * g).sum()).item()) for _, g in opt.grads()]
    assert all(n <= 0.5 + 1e-4 for n in norms) and len(norms) == 2
    opt.step()
    np.testing.assert_array_equal(lin.weight.numpy(), w0)  # frozen: no decay, no update
    assert not np.allclose(lin.bias.numpy(), b0)


def test_param_groups_exclude_biases_and_norms_from_weight_decay():
    from jhssl.optim import param_groups
    m = build_model(tiny_config())
    groups = param_groups(m.student)
    dec, nodec = groups[0], groups[1]
    assert dec["regularized"] and not nodec["regularized"] and nodec["weight_decay"] == 0.0
    assert all(not n.endswith(".bias") and "norm" not in n.split(".")[-2] for n in dec["names"])
    assert "backbone.norm.weight" in nodec["names"] and "head.mlp.0.bias" in nodec["names"]
    assert "head.mlp.0.weight" in dec["names"]
    assert "last_layer.weight_g" not in dec["names"] + nodec["names"] or not m.cfg.model.norm_last_layer


def test_two_concatenated_heads_build_and_train_step():
    m = build_model(tiny_config(extra=["hssl.heads=[convnext,resmlp]"]))
    assert m.student.aux_head.out_dim == 64  # 2 x 32 channels, concatenated (Eq. 9)
    assert tuple(m.student.aux_proj.mlp[0].weight.shape) == (32, 64)
    rng = np.random.default_rng(0)
    crops = [jt.array(rng.normal(size=(2, 3, 16, 16)).astype(np.float32)) for _ in range(2)] + \
            [jt.array(rng.normal(size=(2, 3, 8, 8)).astype(np.float32))]
    masks = [jt.array(rng.random((2, 4, 4)) < 0.5) for _ in range(2)]
    parts = m.compute_loss(crops, masks, 0)
    assert np.isfinite(parts["loss"].item()) and set(parts) == {"loss", "cls_base", "cls_head", "patch_base", "patch_head"}
    with pytest.raises(ValueError, match="share_projection"):
        build_model(tiny_config(extra=["hssl.heads=[convnext,resmlp]", "hssl.separate_proj=false"]))


def test_resmlp_head_is_sized_for_the_global_crop_grid():
    """A 16x16 token grid (patch 2 at 32 px) exceeds ResMLP's default 14x14 cross-patch layer:
    build_model must size it from the global crop, and local crops (8x8) still run."""
    m = build_model(tiny_config(extra=["hssl.heads=[resmlp]", "model.patch_size=2",
                                       "data.global_crop_size=32", "data.local_crop_size=16"]))
    rng = np.random.default_rng(0)
    crops = [jt.array(rng.normal(size=(2, 3, 32, 32)).astype(np.float32)) for _ in range(2)] + \
            [jt.array(rng.normal(size=(2, 3, 16, 16)).astype(np.float32))]
    masks = [jt.array(rng.random((2, 16, 16)) < 0.3) for _ in range(2)]
    parts = m.compute_loss(crops, masks, 0)
    assert np.isfinite(parts["loss"].item())


def test_cls_projection_runs_once_over_every_crop():
    """DINO's MultiCropWrapper projects the CLS tokens of all crops in one head call: with a
    BatchNorm in the projection (model.use_bn_in_head) its batch statistics cover the global and
    the local crops together, so the CLS logits equal the projection of the concatenated features
    (projected per resolution group, the local crops would be normalised on their own)."""
    m = build_model(tiny_config(extra=["model.use_bn_in_head=true", "data.local_crops_number=2"]))
    rng = np.random.default_rng(0)
    crops = [jt.array(rng.normal(size=(3, 3, 16, 16)).astype(np.float32)) for _ in range(2)] + \
            [jt.array(rng.normal(size=(3, 3, 8, 8)).astype(np.float32) + 2.0) for _ in range(2)]
    m.student.train()
    out = m.student(crops, n_global=2, want={"base_cls", "base_feat", "head_cls", "head_feat"})
    assert tuple(out["base_cls"].shape) == (12, 64) and tuple(out["head_cls"].shape) == (12, 64)
    for which in ("base", "head"):
        feats = out[which + "_feat"]
        whole = m.student.project(feats, which, "cls").numpy()
        np.testing.assert_allclose(out[which + "_cls"].numpy(), whole, rtol=1e-4, atol=1e-5)
        per_group = np.concatenate([m.student.project(feats[:6], which, "cls").numpy(),
                                    m.student.project(feats[6:], which, "cls").numpy()])
        assert np.abs(per_group - whole).max() > 1e-3  # the check above can tell the two apart
