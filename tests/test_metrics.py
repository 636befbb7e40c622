"""jhssl.metrics: KL discrepancy (Eq. 5), linear CKA, Procrustes similarity, PNG plots."""
import json
import math

import numpy as np
import pytest

from jhssl import metrics as M


def test_kl_hand_computed():
    pb = np.array([[0.5, 0.5], [1.0, 0.0]])
    ph = np.array([[0.25, 0.75], [0.5, 0.5]])
    # row 1: 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75); row 2: 1 ln(1/0.5) (0 log 0 = 0)
    r1 = 0.5 * math.log(2.0) + 0.5 * math.log(0.5 / 0.75)
    r2 = math.log(2.0)
    assert M.kl_discrepancy(pb, ph) == pytest.approx((r1 + r2) / 2, abs=1e-12)
    assert M.kl_discrepancy(pb, ph, reduce=False) == pytest.approx([r1, r2], abs=1e-12)
    # direction matters: KL(pb || ph) != KL(ph || pb)
    assert M.kl_discrepancy(ph, pb) != pytest.approx(M.kl_discrepancy(pb, ph))
    assert M.kl_discrepancy(pb, pb) == pytest.approx(0.0, abs=1e-15)


def test_kl_safe_and_matches_teacher_probs():
    # a head probability that underflowed to 0 gives a large, finite value
    assert math.isfinite(M.kl_discrepancy([[0.5, 0.5]], [[1.0, 0.0]]))
    rng = np.random.default_rng(0)
    lb, lh = rng.normal(size=(2, 3, 7)), rng.normal(size=(2, 3, 7))  # (B, N, K) tokens
    center = rng.normal(size=(1, 7))
    pb, ph = M.teacher_probs(lb, 0.5, center), M.teacher_probs(lh, 0.5, center)
    ref = np.mean(np.sum(pb * (np.log(pb) - np.log(ph)), axis=-1))
    assert M.kl_discrepancy(pb, ph) == pytest.approx(ref, rel=1e-9)
    assert M.kl_discrepancy_from_logits(lb, lh, 0.5, center, center) == pytest.approx(ref, rel=1e-9)
    # sharp teacher temperature: probabilities underflow, the log-space version stays exact
    big_b, big_h = 40 * lb, 40 * lh
    lpb = big_b / 0.04 - np.log(np.exp(big_b / 0.04 - (big_b / 0.04).max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - (big_b / 0.04).max(-1, keepdims=True)
    lph = big_h / 0.04 - np.log(np.exp(big_h / 0.04 - (big_h / 0.04).max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - (big_h / 0.04).max(-1, keepdims=True)
    exact = np.mean(np.sum(np.exp(lpb) * (lpb - lph), axis=-1))
    assert M.kl_discrepancy_from_logits(big_b, big_h, 0.04) == pytest.approx(exact, rel=1e-9)


def test_kl_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        M.kl_discrepancy([[0.5, 0.5]], [[0.2, 0.3, 0.5]])
    with pytest.raises(ValueError, match="non-negative"):
        M.kl_discrepancy([[1.5, -0.5]], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="sum to 1"):
        M.kl_discrepancy([[0.5, 0.5]], [[0.2, 0.2]])
    with pytest.raises(ValueError, match="logits"):
        M.kl_discrepancy([[3.0, 1.0]], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="NaN"):
        M.kl_discrepancy([[np.nan, 1.0]], [[0.5, 0.5]])


def _cka_hsic(x, y):
    """Independent reference: CKA via HSIC with the centring matrix H (Kornblith et al. Eq. 3)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_hand_and_reference():
    # 1-D features: linear CKA is the squared Pearson correlation; centred x=[-1,0,1], y=[-1,1,0]
    assert M.linear_cka([[1.0], [2.0], [3.0]], [[1.0], [3.0], [2.0]]) == pytest.approx(0.25, abs=1e-12)
    rng = np.random.default_rng(1)
    for n, p, q in ((50, 8, 5), (6, 20, 30)):  # feature-space and Gram-space branches
        x, y = rng.normal(size=(n, p)), rng.normal(size=(n, q))
        assert M.linear_cka(x, y) == pytest.approx(_cka_hsic(x, y), rel=1e-9)


def test_cka_invariances():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 9))
    assert M.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    base = M.linear_cka(x, y)
    assert M.linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert M.linear_cka(3.7 * x, 0.2 * y) == pytest.approx(base, rel=1e-10)
    assert 0.0 <= base < 1.0
    # not invariant to a general (non-orthogonal) linear map: the test would notice a wrong formula
    a = np.diag([10.0, 1, 1, 1, 1, 0.1])
    assert M.linear_cka(x @ a, y) != pytest.approx(base, rel=1e-3)


def test_procrustes_hand_range_rotation():
    # centred, unit-norm 1-D vectors [-1,0,1]/sqrt2 and [-1,1,0]/sqrt2: |<x,y>| = 1/2
    assert M.procrustes_similarity([[1.0], [2.0], [3.0]], [[1.0], [3.0], [2.0]]) == pytest.approx(0.5, abs=1e-12)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 5))
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert M.procrustes_similarity(x, 2.5 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-10)
    y = rng.normal(size=(30, 7))  # different widths are allowed (zero padding)
    s = M.procrustes_similarity(x, y)
    assert 0.0 <= s < 1.0
    # equals 1 - min_R ||X - Y R||^2 / 2 with the explicit optimal rotation R = U V^T
    xc = x - x.mean(0); xc /= np.linalg.norm(xc)
    yc = rng.normal(size=(30, 5)); ys = yc - yc.mean(0); ys /= np.linalg.norm(ys)
    u, _, vt = np.linalg.svd(ys.T @ xc)
    r = u @ vt
    assert M.procrustes_similarity(x, yc) == pytest.approx(1 - np.linalg.norm(xc - ys @ r) ** 2 / 2, abs=1e-10)


def test_feature_bad_inputs():
    with pytest.raises(ValueError, match="same number of samples"):
        M.linear_cka(np.ones((4, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        M.procrustes_similarity(np.ones((1, 3)), np.ones((1, 3)))
    assert math.isnan(M.linear_cka(np.ones((4, 2)), np.arange(8.0).reshape(4, 2)))  # constant input


def test_discrepancy_stats_meter_and_log(tmp_path):
    rng = np.random.default_rng(4)
    pb, ph = M.teacher_probs(rng.normal(size=(12, 5)), 0.1), M.teacher_probs(rng.normal(size=(12, 5)), 0.1)
    fb, fh = rng.normal(size=(12, 4)), rng.normal(size=(12, 6))
    s = M.discrepancy_stats(pb, ph, fb, fh)
    assert s["kl"] == pytest.approx(M.kl_discrepancy(pb, ph))
    assert s["cka"] == pytest.approx(M.linear_cka(fb, fh))
    meter = M.DiscrepancyMeter()
    meter.update(pb[:5], ph[:5], fb[:5], fh[:5])
    meter.update(pb[5:], ph[5:], fb[5:], fh[5:])
    m = meter.compute()
    assert m["kl"] == pytest.approx(s["kl"]) and m["cka"] == pytest.approx(s["cka"])
    assert m["procrustes"] == pytest.approx(s["procrustes"]) and m["n"] == 12
    with pytest.raises(ValueError, match="both"):
        M.discrepancy_stats(pb, None)
    log = M.DiscrepancyLog(str(tmp_path))
    log.add(0, s)
    log.add(1, {"kl": 0.2, "cka": 0.5, "procrustes": 0.6})
    log.add(1, {"kl": 0.3, "cka": 0.5, "procrustes": 0.6})  # re-added epoch replaces the old entry
    lines = [json.loads(l) for l in open(tmp_path / "discrepancy.jsonl")]
    assert [r["epoch"] for r in lines] == [0, 1] and lines[1]["kl"] == 0.3
    from PIL import Image
    img = Image.open(tmp_path / "discrepancy.png")
    assert img.size[0] == 3 * 420  # one panel per metric


def test_bar_chart_png(tmp_path):
    p = str(tmp_path / "bars.png")
    M.plot_bars_png(p, ["a", "b", "c"], [0.1, 0.3, float("nan")], title="t", highlight=1)
    from PIL import Image
    img = Image.open(p).convert("RGB")
    # the highlighted bar is drawn in the second colour
    from jhssl.plots import _COLORS
    assert _COLORS[1] in {c for _, c in img.getcolors(1 << 20)}
    with pytest.raises(ValueError):
        M.plot_bars_png(p, ["a"], [])


def test_run_batches_counts_images_restores_mode_and_empties_the_cache_once(monkeypatch):
    import jittor as jt
    from jittor import nn
    net = nn.Linear(4, 2)
    net.train()
    calls, widths = [], []
    real_gc = jt.gc
    monkeypatch.setattr(jt, "gc", lambda: (calls.append(1), real_gc()))
    batches = [(np.ones((3, 4), np.float32), np.zeros(3)) for _ in range(4)]
    seen = M.run_batches(net, batches, lambda x: widths.append((net.is_training(), int(x.shape[0]))), max_images=10)
    assert seen == 10 and widths == [(False, 3), (False, 3), (False, 3), (False, 1)]  # eval mode, cut at 10
    assert net.is_training() and len(calls) == 1  # once per call, not per batch (a GPU's whole cache each time)
