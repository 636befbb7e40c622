"""Training loop end to end on a tiny synthetic ImageFolder: checkpoints, logs, plots, k-NN, resume."""
import os

import numpy as np
import pytest

from _train_helpers import ROOT, step_records, tiny_config, tiny_overrides, write_image_folder

import jittor as jt  # noqa: E402

from jhssl import checkpoint as ck
from jhssl.train import NonFiniteLossError, train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("imgs")), n_per_class=4)


@pytest.mark.slow
def test_end_to_end_writes_checkpoint_logs_plots_and_knn(data_root, tmp_path):
    out = str(tmp_path / "run")
    cfg = tiny_config(out, data_root)
    res = train(cfg, resume=None, progress=False, log=lambda *a: None)
    assert res["iteration"] == 4 and res["epoch"] == 2  # 8 images / batch 4 = 2 it/epoch, 2 epochs
    assert res["knn"] and 0.0 <= res["knn"][3]["top1"] <= 100.0
    files = os.listdir(out)
    assert {"log.jsonl", "config.yaml", "loss_curves.png", "knn_accuracy.png", "discrepancy.jsonl"} <= set(files)
    rolling = ck.rolling_checkpoints(out)
    assert [i for i, _ in rolling] == [2, 4]  # keep_last=2: epoch 1 and epoch 2
    state = ck.load_checkpoint(rolling[-1][1])
    for key in ("student", "teacher", "optimizer", "loss", "epoch", "iteration", "config", "rng"):
        assert key in state, key
    assert state["epoch"] == 2 and state["iteration"] == 4
    assert state["config"]["hssl"]["heads"] == ["convnext"]
    assert "last_layer.weight_v" in state["student"] and "aux_head.blocks.0.dwconv.weight" in str(list(state["student"]))
    steps = step_records(out)
    assert sorted(steps) == [1, 2, 3, 4]
    for r in steps.values():
        assert np.isfinite(r["loss"]) and {"cls_base", "cls_head", "patch_base", "patch_head", "lr"} <= set(r)
    from PIL import Image
    assert Image.open(os.path.join(out, "knn_accuracy.png")).size == (800, 500)
    # no temporary files left behind by the atomic writes
    assert not [f for f in files if f.startswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [2, 1])  # an epoch boundary, and the middle of an epoch
def test_resume_continues_exactly(data_root, tmp_path, stop_after):
    full = str(tmp_path / "full")
    part = str(tmp_path / "part")
    extra = ["eval_every=0", "save_every_iters=1"]
    train(tiny_config(full, data_root, extra), resume=None, max_iters=stop_after + 1, progress=False,
          log=lambda *a: None)
    train(tiny_config(part, data_root, extra), resume=None, max_iters=stop_after, progress=False,
          log=lambda *a: None)
    assert ck.latest_checkpoint(part).endswith(f"{stop_after:08d}.pkl")
    train(tiny_config(part, data_root, extra), resume="auto", max_iters=1, progress=False, log=lambda *a: None)
    a, b = step_records(full)[stop_after + 1], step_records(part)[stop_after + 1]
    for k in ("loss", "cls_base", "cls_head", "patch_base", "patch_head"):
        assert abs(a[k] - b[k]) <= 1e-5, (k, a[k], b[k])
    # the weights agree too, not just the loss
    ca, cb = ck.load_checkpoint(ck.latest_checkpoint(full)), ck.load_checkpoint(ck.latest_checkpoint(part))
    for net in ("student", "teacher"):
        for k in ca[net]:
            np.testing.assert_allclose(ca[net][k], cb[net][k], rtol=1e-4, atol=1e-5, err_msg=f"{net}.{k}")
    for k in ("center", "center_patch"):
        assert np.abs(ca["loss"][k]).max() > 0
        np.testing.assert_allclose(ca["loss"][k], cb["loss"][k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    out = str(tmp_path / "nan")
    cfg = tiny_config(out, data_root, ["eval_every=0"])
    train(cfg, resume=None, max_iters=2, progress=False, log=lambda *a: None)  # one good epoch
    good = ck.latest_checkpoint(out)
    good_bytes = open(good, "rb").read()
    from jhssl.methods.selfdistill import SelfDistillation
    orig = SelfDistillation.compute_loss

    def poisoned(self, crops, masks, epoch):
        parts = orig(self, crops, masks, epoch)
        parts["loss"] = parts["loss"] * float("nan")
        return parts
    monkeypatch.setattr(SelfDistillation, "compute_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, iteration 2"):
        train(tiny_config(out, data_root, ["eval_every=0"]), resume="auto", progress=False, log=lambda *a: None)
    assert ck.latest_checkpoint(out) == good
    assert open(good, "rb").read() == good_bytes


def test_strict_loader_names_missing_unexpected_and_shapes():
    from jhssl.methods import build_model
    m = build_model(tiny_config())
    state = ck.to_numpy_state(m.student)
    ck.load_state_dict_strict(m.student, state)  # round trip works
    missing = dict(state)
    missing.pop("last_layer.weight_v")
    with pytest.raises(KeyError, match="last_layer.weight_v"):
        ck.load_state_dict_strict(m.student, missing)
    extra = dict(state, bogus=np.zeros(3))
    with pytest.raises(KeyError, match="bogus"):
        ck.load_state_dict_strict(m.student, extra)
    bad = dict(state)
    bad["head.mlp.0.weight"] = np.zeros((5, 5), np.float32)
    with pytest.raises(ValueError, match=r"head.mlp.0.weight.*\(5, 5\).*\(32, 32\)"):
        ck.load_state_dict_strict(m.student, bad)


def test_run_train_cli_bad_key_is_an_error_before_compute(capsys):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run", "train.py"), "--config",
                        os.path.join(ROOT, "configs", "demo.yaml"), "optim.lrr=1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "optim.lrr" in r.stderr


def test_run_train_cli_missing_dataset_is_a_clear_error(tmp_path):
    import subprocess
    import sys
    missing = str(tmp_path / "no_such_dir")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run", "train.py"), "--config",
                        os.path.join(ROOT, "configs", "demo.yaml"), f"data.path={missing}",
                        f"output_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no_such_dir" in r.stderr, r.stderr[-2000:]  # a user error: exit code 2
    assert not os.path.exists(os.path.join(tmp_path, "out", "log.jsonl"))


def test_loss_state_is_every_loss_var_and_restores_strictly():
    """The checkpoint's "loss" entry is the loss module's state dict (DINO: no patch center), and
    restoring it is strict; an old checkpoint's ``center_patch: None`` still loads."""
    from jhssl.methods import build_model
    from jhssl.train import _loss_state
    ibot, dino = build_model(tiny_config()), build_model(tiny_config(method="dino"))
    assert sorted(_loss_state(ibot.loss)) == ["center", "center_patch"]
    assert sorted(_loss_state(dino.loss)) == ["center"]

    class _NoOptimizer:
        def load_state_dict(self, state):
            pass
    from jhssl.train import _restore
    base = {"student": ck.to_numpy_state(dino.student), "teacher": ck.to_numpy_state(dino.teacher),
            "optimizer": {}, "rng": ck.rng_state()}
    old = {"center": np.full((1, 64), 0.5, np.float32), "center_patch": None}
    _restore(dino, _NoOptimizer(), dict(base, loss=old))
    assert np.allclose(dino.loss.center.numpy(), 0.5)
    with pytest.raises(ValueError, match=r"loss: shape mismatch for 'center'"):
        _restore(dino, _NoOptimizer(), dict(base, loss={"center": np.zeros((1, 3), np.float32)}))
    with pytest.raises(KeyError, match="center_patch"):
        _restore(dino, _NoOptimizer(), dict(base, loss={"center": old["center"], "center_patch": np.zeros((1, 1, 64))}))


@pytest.mark.parametrize("method", ["ibot", "dino", "mocov3", "mae"])
def test_baseline_and_hssl_runs_of_one_seed_start_from_the_same_base(method):
    """The paired comparison (and the shared untrained k-NN) needs the same initial base weights in
    both arms: building the auxiliary head must not draw from the RNG before the base is final."""
    from jhssl.methods import build_model

    def base_weights(hssl):
        cfg = tiny_config(extra=[] if hssl else ["hssl=null"], method=method)
        jt.set_global_seed(cfg.seed)
        built = build_model(cfg)
        jt.sync_all()  # as training's first step does: every pending initialiser runs in one batch
        return {k: v.numpy().copy() for k, v in built.student.backbone.state_dict().items()}

    baseline, with_head = base_weights(False), base_weights(True)
    assert baseline.keys() == with_head.keys()
    differ = [k for k in baseline if not np.array_equal(baseline[k], with_head[k])]
    assert not differ, f"{method}: base weights differ between the baseline and HSSL builds: {differ[:5]}"


def test_training_steps_keep_the_allocator_cache(data_root, tmp_path, monkeypatch):
    # jt.gc() after every step made each step fault its working set in again and grew the demo's peak
    # RSS by 0.35 GB (benchmarks/results/allocator_cache-*.md): the loop leaves Jittor's cache alone
    # until the epoch's steps are done, so a run of 3 iterations empties it no more often than a run
    # of 1 (batch 2: one epoch of 4)
    calls = []
    real_gc = jt.gc
    monkeypatch.setattr(jt, "gc", lambda: (calls.append(1), real_gc()))
    counts = []
    for n in (1, 3):
        calls.clear()
        train(tiny_config(str(tmp_path / f"gc{n}"), data_root, ["batch_size=2"]), resume=None, max_iters=n,
              progress=False, evaluate=False, log=lambda *a: None)
        counts.append(len(calls))
    assert counts[0] == counts[1]
