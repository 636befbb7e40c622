"""k-NN: DINO's weighted vote against an independent loop implementation; feature extraction."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

from jhssl.knn import knn_classify


def _reference_knn(train_f, train_l, test_f, test_l, k, T, C):
    """Per test sample: cosine similarities, k nearest, class score = sum of exp(sim / T);
    classes ranked by score (ties: lower class id first), top-1 / top-min(5, k) hit."""
    tr = [np.asarray(v, np.float64) / np.linalg.norm(v) for v in train_f]
    c1 = c5 = 0
    for x, y in zip(test_f, test_l):
        x = np.asarray(x, np.float64) / np.linalg.norm(x)
        sims = [float(np.dot(x, t)) for t in tr]
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        score = [0.0] * C
        for i in nearest:
            score[int(train_l[i])] += np.exp(sims[i] / T)
        ranking = sorted(range(C), key=lambda c: (-score[c], c))
        c1 += ranking[0] == y
        c5 += y in ranking[:min(5, k)]
    return 100.0 * c1 / len(test_l), 100.0 * c5 / len(test_l)


def test_knn_matches_independent_computation():
    rng = np.random.default_rng(0)
    C = 8
    centers = rng.normal(size=(C, 12))
    train_l = rng.integers(0, C, 300)
    test_l = rng.integers(0, C, 70)
    train_f = centers[train_l] + 1.5 * rng.normal(size=(300, 12))
    test_f = centers[test_l] + 1.5 * rng.normal(size=(70, 12))
    ks = [1, 3, 10, 20, 100]
    got = knn_classify(train_f, train_l, test_f, test_l, ks=ks, T=0.07, num_classes=C, chunk=16)
    for k in ks:
        ref1, ref5 = _reference_knn(train_f, train_l, test_f, test_l, k, 0.07, C)
        assert got[k]["top1"] == pytest.approx(ref1) and got[k]["top5"] == pytest.approx(ref5)
    assert 20 < got[20]["top1"] < 100  # a non-trivial case
    # the temperature matters: T=1 weights neighbours almost uniformly
    got_t = knn_classify(train_f, train_l, test_f, test_l, ks=[100], T=1.0, num_classes=C)
    ref1, ref5 = _reference_knn(train_f, train_l, test_f, test_l, 100, 1.0, C)
    assert got_t[100]["top1"] == pytest.approx(ref1) and got_t[100]["top5"] == pytest.approx(ref5)


def test_knn_separable_classes_are_perfect_and_scale_invariant():
    rng = np.random.default_rng(1)
    C, d = 5, 16
    basis = np.eye(d)[:C]
    train_l = np.repeat(np.arange(C), 30)
    test_l = np.repeat(np.arange(C), 7)
    train_f = basis[train_l] + 0.05 * rng.normal(size=(len(train_l), d))
    test_f = (basis[test_l] + 0.05 * rng.normal(size=(len(test_l), d))) * rng.uniform(0.1, 10, (len(test_l), 1))
    res = knn_classify(train_f, train_l, test_f, test_l, ks=[20, 10], T=0.07)
    assert res[20]["top1"] == 100.0 and res[10]["top1"] == 100.0 and res[20]["top5"] == 100.0
    shuffled = rng.permutation(train_l)  # labels unrelated to features: near chance
    assert knn_classify(train_f, shuffled, test_f, test_l, ks=[20])[20]["top1"] < 60


def test_knn_bad_input():
    f = np.ones((5, 3))
    with pytest.raises(ValueError, match="exceeds"):
        knn_classify(f, np.zeros(5), f, np.zeros(5), ks=[6])
    with pytest.raises(ValueError, match="equal C"):
        knn_classify(f, np.zeros(5), np.ones((5, 4)), np.zeros(5))


def test_extract_features_in_dataset_order(tmp_path):
    import jittor as jt

    from jhssl.data import EvalDataset, EvalTransform, ImageFolderSource
    from jhssl.knn import evaluate_knn, extract_features
    rng = np.random.default_rng(0)
    for c, level in (("dark", 40), ("light", 200)):
        (tmp_path / c).mkdir()
        for i in range(5):
            arr = np.clip(level + rng.integers(-20, 20, (10, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / c / f"{i}.png")
    src = ImageFolderSource(str(tmp_path))
    tf = EvalTransform(8, 8, mean=(0, 0, 0), std=(1, 1, 1))
    ds = EvalDataset(src, tf)
    ds.set_attrs(batch_size=3, shuffle=False)

    def model_fn(x):  # (B, 3, H, W) -> (B, 2): mean intensity and a constant
        m = x.mean(dims=(1, 2, 3)).reshape(-1, 1)
        return jt.concat([m, jt.ones_like(m) * 0.5], dim=1)

    feats, labels = extract_features(model_fn, ds)
    expected = np.stack([tf(src.load(i)).mean() for i in range(len(src))])
    np.testing.assert_allclose(feats[:, 0], expected, rtol=1e-5)
    assert labels.tolist() == src.labels.tolist() and feats.shape == (10, 2)
    # the whole evaluation from a config: dark vs light images are separable by brightness
    from jhssl.config import load_config
    cfg = load_config(None, [f"data.path={tmp_path}", f"eval.val_path={tmp_path}", "data.global_crop_size=16",
                             "eval.img_size=8", "eval.resize_size=8", "eval.batch_size=4", "num_workers=0"])
    res = evaluate_knn(cfg, lambda x: jt.concat([x.mean(dims=(1, 2, 3)).reshape(-1, 1) - 0.45,
                                                 jt.ones((x.shape[0], 1)) * 0.1], dim=1), ks=[3], log=None)
    assert res[3]["top1"] == 100.0


def test_eval_cli_reports_clear_errors(tmp_path, capsys):
    from run import eval_knn
    assert eval_knn.main(["--checkpoint", str(tmp_path / "missing.pkl")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="Fashion-MNIST not installed")
def test_checkpoint_round_trip_and_cli(tmp_path, capsys):
    """A trainer-format checkpoint: the loaded network reproduces the saved teacher's features
    (base and head), and run/eval_knn.py evaluates it."""
    import jittor as jt

    from jhssl.checkpoint import to_numpy_state
    from jhssl.config import load_config
    from jhssl.knn import feature_fn, load_eval_network
    from jhssl.methods import build_model
    cfg = load_config(None, ["data.dataset=fashion_mnist", "data.path=/usr/share/datasets/fashion-mnist",
                             "model.arch=vit_tiny", "model.patch_size=8", "data.global_crop_size=16",
                             "model.out_dim=32", "model.patch_out_dim=32", "model.head_hidden_dim=32",
                             "model.head_bottleneck_dim=16", "hssl.depth=1", "eval.train_subset=0.002",
                             "eval.val_subset=0.005", "num_workers=0"])
    method = build_model(cfg)
    ckpt = {"config": cfg.to_dict(), "student": to_numpy_state(method.student),
            "teacher": to_numpy_state(method.teacher)}
    path = str(tmp_path / "ckpt.pkl")
    jt.save(ckpt, path)
    net, cfg2 = load_eval_network(path, "teacher")
    assert cfg2.to_dict() == cfg.to_dict()
    x = jt.array(np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32))
    method.teacher.eval()
    with jt.no_grad():
        for f in ("base", "head"):
            np.testing.assert_allclose(feature_fn(net, f)(x).numpy(), feature_fn(method.teacher, f)(x).numpy(),
                                       rtol=1e-4, atol=1e-5)
    from run import eval_knn
    out = str(tmp_path / "knn.json")
    assert eval_knn.main(["--checkpoint", path, "--features", "head", "--k", "5", "10", "--output", out]) == 0
    text = capsys.readouterr().out
    assert "k-NN (teacher head) T=0.07 k=5: top-1" in text and "k=10" in text
    import json
    res = json.load(open(out))["results"]
    assert set(res) == {"5", "10"} and 0 <= res["10"]["top1"] <= 100


def test_knn_predictions_match_knn_accuracy():
    """Per-sample predictions agree with jhssl.knn's weighted k-NN accuracy."""
    from jhssl.knn import knn_classify, knn_predict
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8))
    tl = rng.integers(0, 3, 60)
    vl = rng.integers(0, 3, 40)
    tr = centers[tl] + rng.normal(scale=1.5, size=(60, 8))
    va = centers[vl] + rng.normal(scale=1.5, size=(40, 8))
    for k in (1, 5, 20):
        pred = knn_predict(tr, tl, va, k=k, T=0.07, num_classes=3)
        acc = knn_classify(tr, tl, va, vl, ks=[k], T=0.07, num_classes=3)[k]["top1"]
        assert 100.0 * np.mean(pred == vl) == pytest.approx(acc)
    with pytest.raises(ValueError, match="k=100"):
        knn_predict(tr, tl, va, k=100)
