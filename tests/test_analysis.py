"""jhssl.analysis: N_s and sIoU (paper Eqs. 3-4) on constructed sets, and run/analyze.py on .npy files."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from _train_helpers import register_tiny_vit as _register_micro
from jhssl import analysis as A

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = "vit_test_tiny"  # dim 32, depth 2, 2 heads


def _mask(idx, n=10):
    m = np.zeros(n, bool)
    m[list(idx)] = True
    return m


def test_ns_siou_constructed():
    b1 = _mask({0, 1, 2, 3})        # U - B1 = {4..9}
    h = _mask({2, 3, 4, 5, 6})      # H ∩ (U-B1) = {4,5,6}
    b2 = _mask({0, 1, 4, 5, 7})     # B2 ∩ (U-B1) = {4,5,7}; ∩ H = {4,5}
    s = A.overlap_stats(b1, b2, h)
    assert s["n_s"] == 3
    assert s["b2_new"] == 3 and s["both_new"] == 2
    assert s["siou"] == pytest.approx(2 / 3)
    assert s["top1_b1"] == pytest.approx(40.0) and s["top1_h"] == pytest.approx(50.0)
    row = A.table3_row("convnext", s)
    assert "| convnext | 50.0 | 40.0 | 50.0 | 3 | 66.7 |" == row


def test_siou_undefined_and_bad_inputs():
    b1 = _mask(range(10))
    s = A.overlap_stats(b1, b1, _mask({1}))  # baseline solves everything: nothing new
    assert s["n_s"] == 0 and math.isnan(s["siou"])
    assert "n/a" in A.table3_row("x", s)
    with pytest.raises(ValueError, match="differ in length"):
        A.overlap_stats(np.ones(3, bool), np.ones(4, bool), np.ones(3, bool))
    with pytest.raises(ValueError, match="empty"):
        A.overlap_stats([], [], [])
    with pytest.raises(ValueError, match="boolean or 0/1"):
        A.overlap_stats([0, 2], [0, 1], [1, 1])
    assert A.correctness([1, 2, 3], [1, 0, 3]).tolist() == [True, False, True]


def test_analyze_cli_npy(tmp_path):
    paths = []
    for name, idx in (("b1", {0, 1, 2, 3}), ("b2", {0, 1, 4, 5, 7}), ("h", {2, 3, 4, 5, 6})):
        p = tmp_path / f"{name}.npy"
        np.save(p, _mask(idx))
        paths.append(str(p))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "run", "analyze.py"), "--baseline-correct", paths[0],
                          "--hssl-base-correct", paths[1], "--hssl-head-correct", paths[2], "--name", "convnext",
                          "--output", str(tmp_path / "a.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| convnext | 50.0 | 40.0 | 50.0 | 3 | 66.7 |" in out.stdout
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "run", "analyze.py"), "--baseline-correct", paths[0]],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "hssl" in bad.stderr.lower()


@pytest.mark.slow
def test_correctness_from_checkpoints(tmp_path):
    """The checkpoint path: baseline + HSSL checkpoints -> three correctness vectors over the val set."""
    from PIL import Image
    import jhssl  # noqa: F401
    from jhssl.checkpoint import atomic_save, to_numpy_state
    from jhssl.config import load_config
    from jhssl.methods import build_model
    _register_micro()
    rng = np.random.default_rng(0)
    for c in range(2):
        os.makedirs(tmp_path / "imgs" / f"c{c}")
        for i in range(5):
            arr = (rng.random((16, 16, 3)) * 80).astype(np.uint8)
            arr[..., c] += 150
            Image.fromarray(arr).save(tmp_path / "imgs" / f"c{c}" / f"{i}.png")
    folder = str(tmp_path / "imgs")
    common = [f"model.arch={MICRO}", "model.patch_size=4", "model.out_dim=16", "model.patch_out_dim=16",
              "model.head_hidden_dim=16", "model.head_bottleneck_dim=8", "hssl.depth=1",
              "data.dataset=folder", f"data.path={folder}", f"eval.val_path={folder}",
              "data.global_crop_size=16", "eval.knn_k=[3]", "eval.batch_size=4", "num_workers=0"]
    paths = {}
    for name, extra in (("base", ["hssl=null"]), ("hssl", ["hssl.heads=[resmlp]"])):
        cfg = load_config(None, common + extra)
        m = build_model(cfg)
        paths[name] = str(tmp_path / f"{name}.pkl")
        atomic_save({"config": cfg.to_dict(), "teacher": to_numpy_state(m.teacher),
                     "student": to_numpy_state(m.student)}, paths[name])
    b1, b2, h, names = A.correctness_from_checkpoints(paths["base"], paths["hssl"], log=lambda *_: None)
    assert names == ["resmlp"]
    assert b1.shape == b2.shape == h.shape == (10,) and b1.dtype == bool
    s = A.overlap_stats(b1, b2, h)
    assert 0 <= s["n_s"] <= 10
    with pytest.raises(ValueError, match="without an auxiliary head"):
        A.correctness_from_checkpoints(paths["hssl"], paths["base"], log=lambda *_: None)
