"""benchmarks/fmnist_seeds.py: the statistics and the log parsing behind the seed-study tables."""
import json
import os
import sys

import pytest

from _train_helpers import ROOT

sys.path.insert(0, ROOT)
from benchmarks.fmnist_seeds import finished_result, mean_std, spearman  # noqa: E402


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
