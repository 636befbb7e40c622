"""Collapse monitors (jhssl.monitors): exact values on fixed inputs, the collapse decision, and the
trainer's warning on a run forced to collapse (and its silence on a healthy one)."""
import math
import os
import warnings

import numpy as np
import pytest

from _train_helpers import step_records, tiny_config, write_image_folder

import jittor as jt  # noqa: E402

from jhssl import monitors
from jhssl.logging import read_jsonl
from jhssl.train import train


def _value(v):
    return float(v.item())


def test_stats_equal_hand_computed_values():
    p = jt.array(np.array([[0.5, 0.5], [1.0, 0.0]], np.float32))
    # entropies ln 2 and 0; mean row (0.75, 0.25)
    assert _value(monitors.entropy_rows(p)) == pytest.approx(math.log(2) / 2, abs=1e-6)
    kl = 0.75 * math.log(0.75 * 2) + 0.25 * math.log(0.25 * 2)
    assert _value(monitors.kl_mean_to_uniform(p)) == pytest.approx(kl, abs=1e-6)
    k = 16
    uniform = jt.full((6, k), 1.0 / k)
    assert _value(monitors.entropy_rows(uniform)) == pytest.approx(math.log(k), abs=1e-5)
    assert _value(monitors.kl_mean_to_uniform(uniform)) == pytest.approx(0.0, abs=1e-6)
    one_hot = np.zeros((6, k), np.float32)
    one_hot[:, 3] = 1.0
    one_hot = jt.array(one_hot)
    assert _value(monitors.entropy_rows(one_hot)) == pytest.approx(0.0, abs=1e-6)
    assert _value(monitors.kl_mean_to_uniform(one_hot)) == pytest.approx(math.log(k), abs=1e-5)


def test_agreement_counts_cross_view_pairs_only():
    # 2 global teacher crops, 3 student crops, batch 2: argmaxes per crop (teacher) / (student)
    t = np.zeros((4, 3), np.float32)
    for r, c in enumerate([0, 1, 2, 2]):  # teacher crop 0: (0, 1); crop 1: (2, 2)
        t[r, c] = 1.0
    s = np.zeros((6, 3), np.float32)
    for r, c in enumerate([2, 2, 0, 0, 2, 1]):  # student crops 0: (2, 2); 1: (0, 0); 2: (2, 1)
        s[r, c] = 5.0
    # pairs (q, v != q): (0,1): 1/2, (0,2): 0/2... teacher crop 0 = (0, 1) vs student crop 2 = (2, 1): 1/2
    # (0,1): (0,1) vs (0,0) -> 1/2; (0,2): 1/2; (1,0): (2,2) vs (2,2) -> 1; (1,2): (2,2) vs (2,1) -> 1/2
    stats = monitors.teacher_stats(jt.array(t), jt.array(s), n_global=2, n_crops=3)
    assert _value(stats["agreement"]) == pytest.approx((0.5 + 0.5 + 1.0 + 0.5) / 4)
    assert set(stats) == set(monitors.MONITOR_KEYS)


def test_collapse_decision():
    k = 1024
    ln_k = math.log(k)
    assert "uniform" in monitors.collapse_warning(0.99 * ln_k, 0.01, k)
    assert "one prototype" in monitors.collapse_warning(0.01, 0.99 * ln_k, k)
    assert monitors.collapse_warning(0.5 * ln_k, 0.3, k) is None
    # the first epoch of a longer run is not judged; the last (or only) one is
    means = {"teacher_entropy": ln_k, "teacher_kl_uniform": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitors.warn_if_collapsed(means, k, epoch=0, epochs=3) is None
        assert monitors.warn_if_collapsed({}, k, epoch=2, epochs=3) is None
    with pytest.warns(monitors.CollapseWarning, match="epoch 1: teacher collapsed to uniform"):
        monitors.warn_if_collapsed(means, k, epoch=1, epochs=3)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("imgs")), n_per_class=4)


def _run(out, data_root, extra):
    os.environ["JHSSL_CACHE_DIR"] = os.path.join(out, "cache")
    cfg = tiny_config(out, data_root, ["eval.knn_untrained=false"] + extra)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, resume=None, progress=False, log=lambda *a: None)
    return [w for w in caught if issubclass(w.category, monitors.CollapseWarning)]


def test_forced_collapse_warns_and_is_logged(data_root, tmp_path):
    out = str(tmp_path / "collapsed")
    # a huge teacher temperature: every target is uniform
    caught = _run(out, data_root, ["loss.warmup_teacher_temp=1000.0", "loss.teacher_temp=1000.0"])
    assert caught and "uniform" in str(caught[0].message)
    recs = [r for r in read_jsonl(os.path.join(out, "log.jsonl")) if r.get("type") == "collapse_warning"]
    assert [r["epoch"] for r in recs] == [1]
    steps = step_records(out)
    for r in steps.values():
        assert r["teacher_entropy"] == pytest.approx(math.log(64), abs=1e-3)
        assert r["teacher_kl_uniform"] == pytest.approx(0.0, abs=1e-3)
        assert 0.0 <= r["agreement"] <= 1.0 and r["log_k"] == pytest.approx(math.log(64))
    assert os.path.isfile(os.path.join(out, "collapse_monitors.png"))


def test_healthy_run_does_not_warn(data_root, tmp_path):
    out = str(tmp_path / "healthy")
    caught = _run(out, data_root, ["loss.warmup_teacher_temp=0.04", "loss.teacher_temp=0.04"])
    assert not caught, [str(w.message) for w in caught]
    steps = step_records(out)
    assert max(r["teacher_entropy"] for r in steps.values()) < 0.95 * math.log(64)


def test_untrained_knn_is_logged_and_cached_per_weights(data_root, tmp_path):
    os.environ["JHSSL_CACHE_DIR"] = str(tmp_path / "cache")
    logs = []
    out1 = str(tmp_path / "a")
    res = train(tiny_config(out1, data_root, ["epochs=1"]), resume=None, progress=False, log=logs.append)
    u = res["knn_untrained"]
    assert u and 0.0 <= u[3]["top1"] <= 100.0
    rec = [r for r in read_jsonl(os.path.join(out1, "log.jsonl")) if r.get("type") == "knn_untrained"]
    assert rec and rec[0]["top1_k3"] == u[3]["top1"]
    assert any(m.startswith("untrained network: k-NN top-1") and "cached" not in m for m in logs)
    assert len(os.listdir(tmp_path / "cache" / "untrained_knn")) == 1
    # the same seed and settings (the HSSL arm or the baseline arm of one seed): read from the cache
    logs.clear()
    res2 = train(tiny_config(str(tmp_path / "b"), data_root, ["epochs=1", "hssl=null"]), resume=None,
                 progress=False, log=logs.append)
    assert res2["knn_untrained"] == u and any("(cached)" in m for m in logs)
    # another seed: other weights, another entry
    train(tiny_config(str(tmp_path / "c"), data_root, ["epochs=1", "seed=4"]), resume=None, progress=False,
          log=lambda *a: None)
    assert len(os.listdir(tmp_path / "cache" / "untrained_knn")) == 2


def test_cli_prints_untrained_next_to_pretrained(data_root, tmp_path, capsys):
    import importlib.util
    import re
    from _train_helpers import ROOT
    from jhssl.config import dump_yaml
    os.environ["JHSSL_CACHE_DIR"] = str(tmp_path / "cache")
    path = str(tmp_path / "cfg.yaml")
    dump_yaml(tiny_config(str(tmp_path / "cli"), data_root, ["epochs=1"]), path)
    spec = importlib.util.spec_from_file_location("train_cli", os.path.join(ROOT, "run", "train.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--config", path, "--no-resume", "--no-progress"]) == 0
    line = re.search(r"k-NN top-1: untrained ([\d.]+)% -> pretrained ([\d.]+)% \(([+-][\d.]+)\)", capsys.readouterr().out)
    assert line, "no untrained -> pretrained line"
    u, p, d = map(float, line.groups())
    assert d == pytest.approx(p - u, abs=0.011)
