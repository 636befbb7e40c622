"""benchmarks/fmnist_eval_table.py: paired differences per seed, the untrained arm, --set validation."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _finished(work, arm, seed, top1):
    d = os.path.join(work, f"{arm}_s{seed}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "knn.json"), "w") as f:
        json.dump({"results": {"20": {"top1": top1}}}, f)


def test_table_pairs_seeds_and_measures_both_arms_against_the_untrained_network(tmp_path, monkeypatch):
    import benchmarks.fmnist_eval_table as table
    monkeypatch.setattr(table, "ROOT", str(tmp_path))  # results go to tmp_path/benchmarks/results
    monkeypatch.setattr("benchmarks.common.machine_info", lambda: {})
    monkeypatch.setattr("benchmarks.common.machine_line", lambda m: "test machine")
    work = str(tmp_path / "work")
    for seed, (b, h, u) in enumerate([(60.0, 63.0, 62.0), (58.0, 62.0, 61.0), (61.0, 62.0, 60.0)]):
        _finished(work, "baseline", seed, b)
        _finished(work, "hssl", seed, h)
        _finished(work, "untrained", seed, u)
    assert table.main(["--baseline", "a", "b", "c", "--hssl", "d", "e", "f", "--untrained", "g", "h", "i",
                       "--protocols", "knn", "--work-dir", work, "--name", "t"]) == 0
    rec = json.load(open(tmp_path / "benchmarks" / "results" / "t.json"))
    knn = rec["table"]["knn"]
    assert knn["hssl_minus_baseline"]["mean"] == pytest.approx((3 + 4 + 1) / 3)
    assert knn["baseline_minus_untrained"]["mean"] == pytest.approx((-2 - 3 + 1) / 3)
    assert knn["hssl_minus_untrained"]["std"] == pytest.approx(0.57735, abs=1e-4)  # sample std of 1, 1, 2
    md = open(tmp_path / "benchmarks" / "results" / "t.md").read()
    assert "| knn | 60.00, 58.00, 61.00 |" in md and "+2.67 ± 1.53" in md


def test_set_names_a_known_protocol(capsys):
    import benchmarks.fmnist_eval_table as table
    with pytest.raises(SystemExit):
        table.main(["--baseline", "a", "--hssl", "b", "--seeds", "0", "--dry-run", "--set", "linaer:epochs=1"])
    assert "expected PROTOCOL:KEY=VALUE" in capsys.readouterr().err
