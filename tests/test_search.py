"""Quick auxiliary-head search (paper Sec. 3.5): a tiny search end to end, and bad inputs."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jhssl  # noqa: F401
from jhssl.config import ConfigError, load_config

from _train_helpers import register_tiny_vit as _register_micro, step_records  # noqa: E402  (registers vit_test_tiny)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = "vit_test_tiny"  # dim 32, depth 2, 2 heads


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in range(2):
        os.makedirs(root / f"c{c}")
        for i in range(6):
            arr = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
            arr[..., c] = 255 - 20 * i  # a class-dependent colour
            Image.fromarray(arr).save(root / f"c{c}" / f"{i}.png")
    return str(root)


def _overrides(folder, out, heads="[convnext,resmlp]"):
    return [f"model.arch={MICRO}", "model.patch_size=4", "model.drop_path_rate=0.0",
            "model.out_dim=32", "model.patch_out_dim=32", "model.head_hidden_dim=32",
            "model.head_bottleneck_dim=16", f"hssl.heads={heads}", "hssl.depth=1",
            "data.dataset=folder", f"data.path={folder}", f"eval.val_path={folder}", "data.subset=1.0",
            "eval.val_subset=1.0", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]",
            "data.global_crop_size=16", "data.local_crop_size=8", "data.local_crops_number=1",
            "eval.batch_size=6", "batch_size=4", "num_workers=0", "epochs=1", f"output_dir={out}",
            "optim.warmup_epochs=0", "mask.pred_ratio=0.3", "mask.pred_ratio_var=0.0"]


@pytest.mark.slow
def test_search_tiny_end_to_end(folder, tmp_path):
    _register_micro()
    from jhssl.search import run_search
    cfg = load_config(os.path.join(ROOT, "configs", "search_vit_tiny_fmnist.yaml"), _overrides(folder, tmp_path))
    logs = []
    res = run_search(cfg, timing_iters=1, max_iters=2, log=logs.append, progress=False)
    ranking = res["ranking"]
    assert sorted(r["head"] for r in ranking) == ["convnext", "resmlp"]
    assert all(math.isfinite(r["D"]) and r["D"] >= 0 for r in ranking)
    assert ranking[0]["D"] >= ranking[1]["D"]
    assert res["recommended"] == f"hssl.heads=[{ranking[0]['head']}]"
    assert any(res["recommended"] in line for line in logs)
    assert res["setup"]["iterations"] == 2 and res["setup"]["eval_images"] == 12
    tm = res["timing"]
    assert tm["search_s_per_iter"] > 0 and tm["single_s_per_iter"] > 0 and tm["ratio"] > 0
    for ext in ("json", "md", "png"):
        assert os.path.getsize(tmp_path / f"search.{ext}") > 0
    assert json.load(open(tmp_path / "search.json"))["recommended"] == res["recommended"]
    assert "| 1 | " + ranking[0]["head"] in open(tmp_path / "search.md").read()
    # trained by jhssl.train.train: its log, and a checkpoint holding every candidate's centers
    hist = [json.loads(x) for x in open(tmp_path / "search_history.jsonl")]
    assert hist and hist[-1]["iteration"] == 2 and all("loss_convnext" in h for h in hist)  # log_freq 10
    from jhssl.checkpoint import load_checkpoint
    state = load_checkpoint(res["checkpoint"])
    assert state["iteration"] == 2
    assert sorted(state["loss"]) == [f"losses.{i}.{c}" for i in (0, 1) for c in ("center", "center_patch")]
    # the CLS centers moved; the search recipe trains Eq. 6 (image-level terms only), so the patch
    # centers are never used and stay 0
    assert cfg.hssl.patch_level == "none"
    assert all(np.abs(state["loss"][f"losses.{i}.center"]).max() > 0 for i in (0, 1))
    assert all(np.abs(state["loss"][f"losses.{i}.center_patch"]).max() == 0 for i in (0, 1))
    # no single-head discrepancy log for a many-head model; the timing runs' scratch is removed
    assert not (tmp_path / "discrepancy.jsonl").exists() and not (tmp_path / "_search_timing").exists()


def test_shard_indices_cover_every_image_once():
    from jhssl.search import shard_indices
    for n, w in ((12, 2), (7, 2), (7, 3), (1, 2)):
        parts = [list(shard_indices(n, r, w)) for r in range(w)]
        assert sorted(sum(parts, [])) == list(range(n)), (n, w, parts)
    assert list(shard_indices(7, 1, 2)) == [1, 3, 5]
    assert list(shard_indices(5)) == list(range(5))  # one process: everything
    with pytest.raises(ValueError, match="rank 2"):
        shard_indices(4, 2, 2)


def test_sharded_discrepancy_equals_unsharded(folder):
    """D measured on two shards (r, r+2, ...) and totalled equals D on all images at once."""
    _register_micro()
    from jhssl.data import build_eval_datasets
    from jhssl.search import build_search, discrepancies, heldout_batches, shard_indices
    cfg = load_config(None, _overrides(folder, "/tmp/unused"))
    m = build_search(cfg)
    _, val = build_eval_datasets(cfg)
    whole = discrepancies(m, heldout_batches(val, range(val.total_len), 5))
    sums = {h: 0.0 for h in whole}
    counts = [len(shard_indices(val.total_len, r, 2)) for r in range(2)]
    for r in range(2):
        part = discrepancies(m, heldout_batches(val, shard_indices(val.total_len, r, 2), 5))
        for h in sums:
            sums[h] += part[h] * counts[r]
    assert sum(counts) == val.total_len == 12
    for h in whole:
        assert whole[h] > 0 and sums[h] / sum(counts) == pytest.approx(whole[h], rel=1e-5)


@pytest.mark.slow
def test_search_resume_continues_exactly(folder, tmp_path):
    """The search trains through jhssl.train.train: resuming restores every candidate's centers."""
    _register_micro()
    from jhssl.search import build_search
    from jhssl.train import train
    extra = ["log_freq=1", "save_every_iters=1", "epochs=2"]
    quiet = dict(progress=False, log=lambda *a: None)
    full, part = str(tmp_path / "full"), str(tmp_path / "part")

    def cfg(out):
        return load_config(None, _overrides(folder, out) + extra)
    train(cfg(full), resume=None, max_iters=4, method=build_search(cfg(full)), evaluate=False, **quiet)
    train(cfg(part), resume=None, max_iters=3, method=build_search(cfg(part)), evaluate=False, **quiet)
    train(cfg(part), resume="auto", max_iters=1, method=build_search(cfg(part)), evaluate=False, **quiet)
    steps = [step_records(d) for d in (full, part)]
    for k in ("loss", "loss_convnext", "loss_resmlp"):
        assert steps[0][4][k] == pytest.approx(steps[1][4][k], abs=1e-5), k
    from jhssl.checkpoint import latest_checkpoint, load_checkpoint
    a, b = (load_checkpoint(latest_checkpoint(d)) for d in (full, part))
    for k in a["loss"]:
        np.testing.assert_allclose(a["loss"][k], b["loss"][k], rtol=1e-4, atol=1e-6, err_msg=k)
    # a checkpoint of another candidate set is refused by name
    other = load_config(None, _overrides(folder, part, heads="[convnext,resmlp,vit]") + extra)
    with pytest.raises(KeyError, match="losses.2.center|branches.2"):
        train(other, resume="auto", max_iters=1, method=build_search(other), evaluate=False, **quiet)


def test_search_model_is_per_candidate(folder):
    """Eq. 7: the loss is the mean of the per-head losses; each branch has its own base projection."""
    _register_micro()
    import jittor as jt
    from jhssl.search import build_search
    cfg = load_config(None, _overrides(folder, "/tmp/unused", heads="[convnext,vit,resmlp]")
                      + ["data.local_crops_number=0", "method=dino"])
    m = build_search(cfg)
    names = [n for n, _ in m.student.named_parameters()]
    for i in range(3):  # separate base projection + head projection + head per candidate
        assert any(n.startswith(f"branches.{i}.head.mlp.") for n in names)
        assert any(n.startswith(f"branches.{i}.aux_proj.mlp.") for n in names)
        assert any(n.startswith(f"branches.{i}.aux_head.") for n in names)
    assert sum(n.startswith("backbone.") for n in names) > 0 and not any(".backbone." in n for n in names)
    jt.set_global_seed(0)
    crops = [jt.randn(4, 3, 16, 16), jt.randn(4, 3, 16, 16)]
    parts = m.compute_loss(crops, None, 0)
    per = [parts[f"loss_{h}"].item() for h in ("convnext", "vit", "resmlp")]
    assert parts["loss"].item() == pytest.approx(np.mean(per), rel=1e-5)
    assert len(set(np.round(per, 6))) == 3  # the candidates are distinct branches


def test_search_bad_inputs(folder, tmp_path):
    with pytest.raises(ConfigError, match="known|allowed") as e:
        load_config(None, ["hssl.heads=[convnext,transformerxl]"])
    assert "poolformer" in str(e.value)
    with pytest.raises(ConfigError, match="subset"):
        load_config(None, ["data.subset=0.0"])
    from jhssl.search import check_search_config, run_search
    with pytest.raises(ConfigError, match="more than once"):
        check_search_config(load_config(None, ["hssl.heads=[vit,vit]"]))
    with pytest.raises(ConfigError, match="hssl"):
        check_search_config(load_config(None, ["hssl=null"]))
    # a subset too small for one batch fails before any training
    _register_micro()
    cfg = load_config(None, _overrides(folder, tmp_path) + ["batch_size=64"])
    with pytest.raises(ValueError, match="batch_size"):
        run_search(cfg, timing_iters=0, log=lambda *_: None, progress=False)
    # the CLI names the known heads
    out = subprocess.run([sys.executable, os.path.join(ROOT, "run", "search.py"), "--config",
                          os.path.join(ROOT, "configs", "search_vit_tiny_fmnist.yaml"), "hssl.heads=[foo]"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "convnext" in out.stderr and "foo" in out.stderr


def test_network_discrepancy_per_epoch_log(folder, tmp_path):
    """Per-epoch D / CKA / Procrustes of a single-head HSSL network, logged to JSONL + PNG."""
    _register_micro()
    import jittor as jt
    from jhssl import metrics as M
    from jhssl.methods import build_model
    cfg = load_config(None, _overrides(folder, tmp_path, heads="[convnext]"))
    m = build_model(cfg)
    jt.set_global_seed(0)
    batches = [jt.randn(5, 3, 16, 16), jt.randn(5, 3, 16, 16)]
    s = M.network_discrepancy(m, batches, max_images=8)
    assert s["n"] == 8 and math.isfinite(s["kl"]) and s["kl"] > 0
    assert 0 <= s["cka"] <= 1 and 0 <= s["procrustes"] <= 1
    log = M.DiscrepancyLog(str(tmp_path))
    log.add(0, s)
    assert os.path.getsize(tmp_path / "discrepancy.png") > 0
    with pytest.raises(ValueError, match="auxiliary head"):
        M.network_discrepancy(build_model(load_config(None, _overrides(folder, tmp_path) + ["hssl=null"])), batches)


def test_one_candidate_search_equals_single_head_hssl(folder):
    """With one candidate, the search's loss is exactly the single-head HSSL loss (same weights)."""
    _register_micro()
    import jittor as jt
    from jhssl.checkpoint import load_state_dict_strict, to_numpy_state
    from jhssl.methods import build_model
    from jhssl.search import build_search
    cfg = load_config(None, _overrides(folder, "/tmp/unused", heads="[resmlp]")
                      + ["data.local_crops_number=1", "method=ibot"])
    single = build_model(cfg)
    search = build_search(cfg)
    for net in ("student", "teacher"):
        st = to_numpy_state(getattr(single, net))
        mapped = {(k if k.startswith("backbone.") else "branches.0." + k): v for k, v in st.items()}
        load_state_dict_strict(getattr(search, net), mapped, what=net)
    jt.set_global_seed(1)
    crops = [jt.randn(4, 3, 16, 16), jt.randn(4, 3, 16, 16), jt.randn(4, 3, 8, 8)]
    masks = [jt.array(np.random.default_rng(i).random((4, 4, 4)) < 0.4) for i in range(2)]
    a = single.compute_loss(crops, masks, 0)["loss"].item()
    b = search.compute_loss(crops, masks, 0)
    assert b["loss"].item() == pytest.approx(a, rel=1e-5)
    assert b["loss_resmlp"].item() == pytest.approx(a, rel=1e-5)


_MPI_SEARCH = """
import json, os, sys
sys.path.insert(0, {here!r})
from test_search import _overrides, _register_micro
from jhssl import dist
from jhssl.config import load_config
from jhssl.search import run_search
_register_micro()
cfg = load_config(os.path.join({root!r}, "configs", "search_vit_tiny_fmnist.yaml"), _overrides({folder!r}, {out!r}))
res = run_search(cfg, timing_iters=1, max_iters=2, log=lambda *a: None, progress=False)
json.dump(res["discrepancy"], open(os.path.join({out!r}, f"d_rank{{dist.rank()}}.json"), "w"))
"""


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun (OpenMPI) is not installed")
def test_search_under_mpi_matches_one_process(folder, tmp_path):
    """2 ranks x 2 images per batch == 1 process x 4: same trained search, same D (each rank
    measures half of the held-out images, the sums are totalled), the same on both ranks."""
    here = os.path.dirname(os.path.abspath(__file__))
    runs = {}
    for name, launcher in (("one", []), ("two", [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe",
                                                  "-np", "2"])):
        out = str(tmp_path / name)
        os.makedirs(out)
        script = _MPI_SEARCH.format(here=here, root=ROOT, folder=folder, out=out)
        p = subprocess.run(launcher + [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr[-4000:]
        runs[name] = {int(f[6:-5]): json.load(open(os.path.join(out, f))) for f in os.listdir(out)
                      if f.startswith("d_rank")}
        assert os.path.isfile(os.path.join(out, "search.json"))
    assert sorted(runs["one"]) == [0] and sorted(runs["two"]) == [0, 1]
    one, two = runs["one"][0], runs["two"][0]
    assert two == runs["two"][1]  # every rank returns the totalled D
    for h in one:
        assert two[h] == pytest.approx(one[h], rel=1e-3, abs=1e-6), (h, one, two)
