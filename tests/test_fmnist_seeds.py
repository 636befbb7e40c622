"""benchmarks/fmnist_seeds.py: the statistics and the log parsing behind the seed-study tables."""
import json
import os
import sys

import pytest

from _train_helpers import ROOT

sys.path.insert(0, ROOT)
from benchmarks.fmnist_seeds import finished_result, load_discrepancy, mean_std, spearman  # noqa: E402


def test_spearman_rank_correlation_and_exact_permutation_p():
    r, p = spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0])
    assert r == pytest.approx(1.0) and p == pytest.approx(2 / 24)  # identity and reversal reach |rho| = 1
    r, _ = spearman([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0])
    assert r == pytest.approx(-1.0)
    # ties get average ranks: x ranks (1, 2.5, 2.5, 4), y ranks (1, 2, 3, 4)
    r, _ = spearman([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    assert r == pytest.approx(0.9486832980505138)  # 4.5 / sqrt(4.5 * 5)


def test_mean_std_uses_the_sample_std():
    m, s = mean_std([58.70, 58.85, 59.95])
    assert m == pytest.approx(59.1667, abs=1e-4) and s == pytest.approx(0.6825, abs=1e-4)
    assert mean_std([1.0]) == (1.0, None) and mean_std([]) == (None, None)


def test_finished_result_reads_the_final_knn_and_the_untrained_level(tmp_path):
    recs = [{"type": "knn_untrained", "epoch": 0, "iteration": 0, "time": 10.0, "top1_k20": 63.1, "top5_k20": 95.0},
            {"type": "step", "epoch": 0, "iteration": 5, "time": 20.0, "cls_base": 6.0, "teacher_entropy": 5.0,
             "teacher_kl_uniform": 1.0, "agreement": 0.5},
            {"type": "knn", "epoch": 2, "iteration": 186, "time": 70.0, "top1_k20": 61.8, "top5_k20": 95.5}]
    with open(os.path.join(tmp_path, "log.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in recs) + "\n")
    r = finished_result(str(tmp_path), epochs=2)
    assert (r["knn_top1"], r["untrained_top1"], r["iterations"], r["logged_s"]) == (61.8, 63.1, 186, 60.0)
    assert r["final_monitors"]["teacher_entropy"] == 5.0
    assert finished_result(str(tmp_path), epochs=3) is None  # the run has not reached its last epoch


def _write_run(run_dir, untrained, final, loss_first, loss_last):
    os.makedirs(run_dir, exist_ok=True)
    recs = [{"type": "knn_untrained", "epoch": 0, "iteration": 0, "time": 0.0, "top1_k20": untrained, "top5_k20": 90.0},
            {"type": "step", "epoch": 0, "iteration": 5, "time": 1.0, "loss": loss_first},
            {"type": "step", "epoch": 1, "iteration": 186, "time": 2.0, "loss": loss_last},
            {"type": "knn", "epoch": 2, "iteration": 186, "time": 3.0, "top1_k20": final, "top5_k20": 95.0}]
    with open(os.path.join(run_dir, "log.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in recs) + "\n")


def test_bases_table_reuses_finished_runs_and_reports_each_bases_gain(tmp_path, monkeypatch):
    import benchmarks.fmnist_bases as fb
    import jhssl.train
    monkeypatch.setattr(fb, "training_machine", lambda: {"device": "cpu", "jittor": "x"})
    monkeypatch.setattr(fb, "machine_line", lambda m: "machine")
    monkeypatch.setattr(jhssl.train, "train", lambda *a, **k: pytest.fail("--resume must not train a finished run"))
    work, out = tmp_path / "work", tmp_path / "out"
    _write_run(str(work / "resnet50-dino_baseline"), 55.0, 60.5, 6.4, 6.1)
    _write_run(str(work / "resnet50-dino_hssl"), 55.0, 63.0, 13.2, 12.0)
    assert fb.main(["--resume", "--bases", "resnet50-dino", "--work-dir", str(work), "--out", str(out),
                    "--name", "t"]) == 0
    rep = json.load(open(out / "t.json"))
    assert [(r["arm"], r["knn_top1_untrained"], r["knn_top1"], r["loss_first"], r["loss_last"]) for r in rep["rows"]] \
        == [("baseline", 55.0, 60.5, 6.4, 6.1), ("hssl", 55.0, 63.0, 13.2, 12.0)]
    assert "hssl=null" in rep["rows"][0]["overrides"] and "method=dino" in rep["rows"][1]["overrides"]
    md = open(out / "t.md").read()
    assert "| resnet50-dino | 55.00 | 60.50 | 63.00 | +5.50 | +2.50 |" in md and "PARTIAL" not in md


def test_discrepancy_of_several_searches_is_their_mean_per_head(tmp_path):
    paths = []
    for i, d in enumerate(({"convnext": 4.0, "vit": 6.0, "resnet": 1.0}, {"convnext": 2.0, "vit": 5.0})):
        paths.append(str(tmp_path / f"s{i}.json"))
        json.dump({"discrepancy": d, "command": f"search {i}"}, open(paths[-1], "w"))
    disc = load_discrepancy(paths + [str(tmp_path / "missing.json")])
    assert disc["D"] == {"convnext": 3.0, "vit": 5.5}  # a head missing from one search has no mean
    assert [r["command"] for r in disc["searches"]] == ["search 0", "search 1"]
    assert load_discrepancy([str(tmp_path / "missing.json")]) is None
