"""Distributed training under mpirun (2 CPU ranks) is equivalent to one process with the same
global batch, shards the data, reduces the centers over the global batch, gathers k-NN features,
and fails fast and loudly.

Each test launches a helper from tests/mpi_scripts/ with ``mpirun -np 2`` (``--allow-run-as-root
--oversubscribe``: root in CI, 2 cores) and compares with a single-process run of the same script.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPTS = os.path.join(HERE, "mpi_scripts")
sys.path.insert(0, HERE)

from _train_helpers import step_records, write_image_folder  # noqa: E402

MPIRUN = shutil.which("mpirun")
pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(MPIRUN is None, reason="mpirun (OpenMPI) is not installed: distributed tests skipped")]

# 16 train images, global batch 8: 2 iterations per epoch, 3 iterations cross an epoch boundary.
COMMON = ["model.drop_path_rate=0", "batch_size=8", "epochs=2", "log_freq=1", "save_every_iters=0"]
N_ITERS = 3


def mpi_cmd(script, *args, np_=2):
    return [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", str(np_),
            sys.executable, os.path.join(SCRIPTS, script), *args]


# A harness limit against a hung job, not a speed assertion: a cold Jittor cache compiles every
# kernel of the run first (serially: models/env.py turns the parallel op compiler off), which took
# over 420 s on a loaded 2-core machine.
def run(cmd, timeout=900):
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p, time.time() - t0


def assert_ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("mpi_data")), n_per_class=8)


def step_losses(out_dir):
    return {i: r["loss"] for i, r in step_records(out_dir).items()}


def load_state(path):
    with np.load(path) as d:
        return {k: d[k].astype(np.float64) for k in d.files}


def max_diff(a, b):
    assert sorted(a) == sorted(b), "different state keys"
    return max(float(np.abs(a[k] - b[k]).max()) if a[k].size else 0.0 for k in a)


# ----------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("head", ["convnext", "resnet"])
def test_two_ranks_match_one_process(tmp_path, data_root, head):
    """2 ranks x 4 images == 1 rank x 8 images: same losses (global mean), ranks identical,
    parameters/teacher/centers equal to the single-process run. ``resnet`` has BatchNorm in the
    head (synchronised across ranks) and checks that too."""
    extra = COMMON + [f"hssl.heads=[{head}]"]
    single, dual = str(tmp_path / "single"), str(tmp_path / "dual")
    p1, _ = run([sys.executable, os.path.join(SCRIPTS, "train_run.py"), "--out", single, "--data", data_root,
                 "--max-iters", str(N_ITERS), *extra])
    assert_ok(p1)
    p2, _ = run(mpi_cmd("train_run.py", "--out", dual, "--data", data_root, "--max-iters", str(N_ITERS), *extra))
    assert_ok(p2)

    l1, l2 = step_losses(single), step_losses(dual)
    assert sorted(l1) == sorted(l2) == list(range(1, N_ITERS + 1)), (l1, l2)
    for it in l1:
        assert abs(l1[it] - l2[it]) < 1e-4, f"iteration {it}: loss {l1[it]} (1 rank) vs {l2[it]} (2 ranks)"

    s1 = load_state(os.path.join(single, "state_rank0.npz"))
    r0 = load_state(os.path.join(dual, "state_rank0.npz"))
    r1 = load_state(os.path.join(dual, "state_rank1.npz"))
    assert not os.path.exists(os.path.join(single, "state_rank1.npz"))
    assert max_diff(r0, r1) < 1e-6, "ranks diverged"
    # the per-epoch base/head discrepancy (HSSL) is measured on the same images as one process
    disc = [[json.loads(x) for x in open(os.path.join(d, "discrepancy.jsonl")) if x.strip()] for d in (single, dual)]
    assert len(disc[0]) == len(disc[1]) == 1
    for key in ("kl", "cka", "procrustes", "n"):
        assert abs(disc[0][0][key] - disc[1][0][key]) < 1e-4, (key, disc)
    d = max_diff(s1, r0)
    assert d < 1e-4, f"2 ranks differ from 1 process by {d}"
    print(f"[{head}] loss |1 rank - 2 ranks| max {max(abs(l1[i] - l2[i]) for i in l1):.2e}; "
          f"rank 0 vs rank 1 {max_diff(r0, r1):.2e}; 1 process vs 2 ranks {d:.2e}")
    # the run really trained (a no-op trainer would match trivially)
    from jhssl.checkpoint import load_checkpoint
    ck = load_checkpoint(os.path.join(dual, f"checkpoint_{N_ITERS:08d}.pkl"))
    assert ck["iteration"] == N_ITERS
    moved = max(float(np.abs(ck["student"][k] - s1["student." + k]).max()) for k in ck["student"])
    assert moved < 1e-4  # rank 0's checkpoint is the same state
    first = load_checkpoint(os.path.join(dual, "checkpoint_00000002.pkl"))
    assert max(float(np.abs(first["student"][k] - ck["student"][k]).max()) for k in ck["student"]) > 1e-6
    # only rank 0 writes: one log, one set of checkpoints, no stray files from rank 1
    assert sorted(f for f in os.listdir(dual) if f.endswith(".pkl")) == \
        ["checkpoint_00000002.pkl", f"checkpoint_{N_ITERS:08d}.pkl"]

    if head == "convnext":
        # every rank resumes from rank 0's checkpoint: iteration 2 -> 3 again gives the same state
        resumed = str(tmp_path / "resumed")
        os.makedirs(resumed)
        shutil.copy(os.path.join(dual, "checkpoint_00000002.pkl"), resumed)
        p3, _ = run(mpi_cmd("train_run.py", "--out", resumed, "--data", data_root, "--max-iters", "1",
                            "--resume", *extra))
        assert_ok(p3)
        assert "resumed from" in p3.stdout and "iteration 2" in p3.stdout
        q0 = load_state(os.path.join(resumed, "state_rank0.npz"))
        q1 = load_state(os.path.join(resumed, "state_rank1.npz"))
        assert max_diff(q0, q1) < 1e-6, "ranks diverged after resuming"
        dr = max_diff(q0, r0)
        assert dr < 1e-5, f"resumed run differs from the uninterrupted one by {dr}"
        assert abs(step_losses(resumed)[N_ITERS] - l2[N_ITERS]) < 1e-5


# ----------------------------------------------------------------------------- data, centers, k-NN
def test_shards_centers_knn_collectives(tmp_path):
    root = write_image_folder(str(tmp_path / "data"), n_per_class=4)  # 8 train images
    out = str(tmp_path / "out")
    p, _ = run(mpi_cmd("collectives.py", "--out", out, "--data", root))
    assert_ok(p)
    r = np.load(os.path.join(out, "collectives.npz"))
    assert int(r["world_size"][0]) == 2

    # shards: disjoint, covering the epoch, each rank the r-th half of every global batch
    from jhssl.data.datasets import epoch_permutation
    shards = r["shards"].astype(np.int64)  # (rank, epoch, samples)
    assert list(r["per_rank_batch"]) == [2, 2]
    for e in range(shards.shape[1]):
        a, b = shards[0, e], shards[1, e]
        assert not set(a) & set(b), f"epoch {e}: ranks share samples {set(a) & set(b)}"
        assert sorted(np.concatenate([a, b])) == list(range(8)), f"epoch {e} not covered"
        perm = epoch_permutation(8, 3, e).reshape(-1, 4)  # seed 3 (tiny config), global batch 4
        assert a.tolist() == perm[:, :2].ravel().tolist() and b.tolist() == perm[:, 2:].ravel().tolist()
    assert shards[0, 0].tolist() != shards[0, 1].tolist(), "epochs must be reshuffled"

    # centers: identical on both ranks, equal to the single-process EMA over the global batch
    c = np.zeros(16)
    cp = np.zeros(16)
    for cls, patch in zip(r["center_inputs_cls"], r["center_inputs_patch"]):
        c = 0.9 * c + 0.1 * cls.astype(np.float64).mean(0)
        cp = 0.9 * cp + 0.1 * patch.astype(np.float64).mean((0, 1))
    for rank in range(2):
        np.testing.assert_allclose(r["center"][rank], c, atol=1e-6)
        np.testing.assert_allclose(r["center_patch"][rank], cp, atol=1e-6)

    # k-NN features gathered over ranks (batch 3: uneven, overlapping last batch) == one process
    sys.path.insert(0, SCRIPTS)
    from collectives import image_features
    from _train_helpers import tiny_config
    from jhssl.data import build_eval_datasets
    from jhssl.knn import extract_features
    cfg = tiny_config(str(tmp_path / "unused"), root)
    feats, labels = extract_features(image_features, build_eval_datasets(cfg)[0], batch_size=3)
    np.testing.assert_allclose(r["knn_feats"], feats, atol=1e-6)
    assert r["knn_labels"].tolist() == labels.tolist()

    # broadcast_module: every Var (int64 BatchNorm counter and stop-grad statistics included)
    assert float(r["divergence_before"][0]) > 1e-3 and float(r["divergence_after"][0]) == 0.0
    assert r["bn_tracked"].tolist() == [5, 5] and str(r["bn_tracked_dtype"][0]) == "int64"
    assert bool(r["bn_stop_grad"][0])

    # numpy helpers: uneven gather in rank order, mean, broadcast, batch check
    assert r["gather_uneven"].tolist() == [[0, 0], [1, 1], [1, 1]]
    assert r["reduce_mean"].tolist() == [0.5, 10.0]
    assert bool(r["broadcast_obj"][0])
    assert "divisible by the number of MPI ranks (2)" in str(r["batch_check"][0])


def test_batch_not_divisible_is_a_startup_error(tmp_path):
    """Through the real entry point (run/train.py): an error before any compute, on every rank."""
    out = tmp_path / "o"
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "-np", "2", sys.executable,
           os.path.join(ROOT, "run", "train.py"), "--config", os.path.join(ROOT, "configs", "demo.yaml"),
           "--no-progress", f"output_dir={out}", "batch_size=7"]
    p, secs = run(cmd, timeout=240)
    assert p.returncode != 0
    assert "batch_size=7 is the global batch and must be divisible by the number of MPI ranks (2)" in p.stderr, \
        p.stderr[-3000:]
    assert "failed" in p.stderr and "rank " in p.stderr
    assert not (out.exists() and [f for f in os.listdir(out) if f.endswith(".pkl")])


# ----------------------------------------------------------------------------- failures
def _latest_checkpoint_loads(out_dir):
    from jhssl.checkpoint import latest_checkpoint, load_checkpoint
    path = latest_checkpoint(out_dir)
    assert path is not None, "no checkpoint was written before the failure"
    ck = load_checkpoint(path)
    assert ck["iteration"] >= 1 and "student" in ck and "teacher" in ck
    return ck


def test_raising_rank_ends_job_and_names_rank(tmp_path, data_root):
    out = str(tmp_path / "o")
    p, secs = run(mpi_cmd("train_run.py", "--out", out, "--data", data_root, "--max-iters", "50",
                          "--raise-at", "4", "--raise-rank", "1", *COMMON, "epochs=30", "save_every_iters=1"),
                  timeout=300)
    assert p.returncode != 0
    assert "rank 1 failed" in p.stderr and "injected failure in iteration 4" in p.stderr, p.stderr[-3000:]
    raised_at = float(open(os.path.join(out, "raised_at")).read())
    ended_after = time.time() - raised_at
    assert ended_after < 60, f"the job took {ended_after:.0f}s to end after rank 1 raised"
    print(f"job ended {ended_after:.1f}s after rank 1 raised (exit {p.returncode})")
    ck = _latest_checkpoint_loads(out)
    assert ck["iteration"] <= 3


def test_killed_rank_ends_job(tmp_path, data_root):
    out = str(tmp_path / "o")
    proc = subprocess.Popen(mpi_cmd("train_run.py", "--out", out, "--data", data_root, "--max-iters", "1000",
                                    "--step-sleep", "0.3", *COMMON, "epochs=500", "save_every_iters=1"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        from jhssl.checkpoint import latest_checkpoint
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(os.path.join(out, "pid_rank1")) and latest_checkpoint(out):
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"the job ended early: {proc.communicate()[1][-3000:]}"
        assert latest_checkpoint(out), "no checkpoint after 240 s"
        pid = int(open(os.path.join(out, "pid_rank1")).read())
        t0 = time.time()
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        took = time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert took < 60, f"the job took {took:.0f}s to end after rank 1 was killed"
    print(f"job ended {took:.1f}s after SIGKILL of rank 1 (exit {proc.returncode})")
    _latest_checkpoint_loads(out)
