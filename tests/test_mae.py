"""MAE and MAE + HSSL (issue 13): masking, the visible-only encoder, unshuffle order, sin-cos tables,
norm_pix_loss, gradients of both decoders and the head, checkpoints/export, a Fashion-MNIST run."""
import os

import numpy as np
import pytest

from _train_helpers import step_records, tiny_config, write_image_folder

import jittor as jt  # noqa: E402

from jhssl.data.masking import RandomPatchMask
from jhssl.methods.mae import layer_norm_target, masked_mse, masking_rows, norm_pix_target

TINY_MAE = ["optim.betas=[0.9,0.95]"]  # with tiny_config's method=mae keys (a 1-block decoder of width 16)


def mae_config(out="/tmp/jhssl_unused", data_root=None, extra=(), hssl=True):
    return tiny_config(out, data_root, TINY_MAE + ([] if hssl else ["hssl=null"]) + list(extra), method="mae")


def batch_masks(n, crop=16, patch=4, ratio=0.75, seed=0):
    gen, rng = RandomPatchMask(patch, ratio), np.random.default_rng(seed)
    return np.stack([gen(crop, rng) for _ in range(n)])


# ----------------------------------------------------------------------------- sin-cos, patchify
def _mae_sincos_reference(dim, gs):
    """facebookresearch/mae util/pos_embed.py written from its description: meshgrid(w, h), the first
    half from grid[0] (column index), the second from grid[1] (row index), each [sin, cos]."""
    grid = np.meshgrid(np.arange(gs, dtype=np.float64), np.arange(gs, dtype=np.float64))  # 'xy' indexing
    halves = []
    for g in grid:
        omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4.0))
        out = np.einsum("m,d->md", g.reshape(-1), omega)
        halves.append(np.concatenate([np.sin(out), np.cos(out)], axis=1))
    return np.concatenate([np.zeros((1, dim)), np.concatenate(halves, axis=1)], axis=0)


def test_sincos_table_matches_mae_reference():
    from models.layers.pos_embed import sincos_2d_pos_embed
    for dim, gs in ((16, 4), (384, 14), (512, 7)):
        ours = sincos_2d_pos_embed(dim, gs, gs, cls_token=True)
        np.testing.assert_allclose(ours, _mae_sincos_reference(dim, gs), atol=1e-6)
    t = sincos_2d_pos_embed(8, 2, 3)
    assert t.shape == (6, 8)
    # token 1 is (row 0, column 1): the first half moves with the column, the second does not
    assert not np.allclose(t[0, :4], t[1, :4]) and np.allclose(t[0, 4:], t[1, 4:])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_pos_embed(6, 2, 2)


def test_patchify_layout_and_unpatchify_round_trip():
    from models.mae import patchify, unpatchify
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 12)).astype(np.float32)
    rows = patchify(jt.array(x), 4).numpy()
    # MAE: einsum('nchpwq->nhwpqc')
    ref = np.einsum("nchpwq->nhwpqc", x.reshape(2, 3, 2, 4, 3, 4)).reshape(2, 6, 48)
    np.testing.assert_array_equal(rows, ref)
    np.testing.assert_array_equal(unpatchify(jt.array(rows), 4, (2, 3)).numpy(), x)
    np.testing.assert_array_equal(unpatchify(rows, 4, (2, 3)), x)


# ----------------------------------------------------------------------------- masking, encoder
def test_random_patch_mask_is_exactly_75_percent_per_image():
    gen, rng = RandomPatchMask(16, 0.75), np.random.default_rng(0)
    masks = [gen(224, rng) for _ in range(20)]
    assert all(m.shape == (14, 14) and m.sum() == 196 - int(196 * 0.25) == 147 for m in masks)
    assert len({m.tobytes() for m in masks}) == 20  # random per image
    # MAE's count where int(0.75 * N) would differ: N = 49 keeps int(49 * 0.25) = 12
    assert RandomPatchMask(4, 0.75)(28, rng).sum() == 37
    with pytest.raises(ValueError, match="mask_ratio"):
        RandomPatchMask(16, 1.0)


def test_masking_rows_keep_and_restore():
    m = batch_masks(3)
    keep, restore, flat, k = masking_rows(m)
    assert k == 4 and keep.shape == (12,) and restore.shape == (48,) and flat.shape == (3, 16)
    kept = keep.numpy().reshape(3, 4) - (np.arange(3) * 16)[:, None]
    for b in range(3):
        assert not flat[b, kept[b]].any() and flat[b].sum() == 12
    with pytest.raises(ValueError, match="same number of masked patches"):
        masking_rows(np.array([[True, False, False, False], [True, True, False, False]]))
    with pytest.raises(ValueError, match="at least one visible"):
        masking_rows(np.ones((1, 4), bool))


def test_encoder_sees_only_the_visible_patches():
    from _train_helpers import register_tiny_vit
    models = register_tiny_vit()
    vit = models.create_model("vit_test_tiny", patch_size=4, img_size=16)
    vit.eval()
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    m = batch_masks(2)
    keep, _, flat, k = masking_rows(m)
    out = vit.forward_visible(jt.array(x), keep, k)
    assert out["patch"].shape == (2, 4, 32) and out["head_input"].shape == (2, 4, 32) and out["cls"].shape == (2, 32)
    # changing the masked patches' pixels changes nothing: they never reach the blocks
    noisy = x.copy()
    pix = np.kron(m.astype(np.float32), np.ones((4, 4), np.float32))[:, None]  # masked pixels
    noisy = noisy * (1 - pix) + 100.0 * pix
    out2 = vit.forward_visible(jt.array(noisy), keep, k)
    np.testing.assert_allclose(out2["patch"].numpy(), out["patch"].numpy(), atol=1e-5)
    # with nothing masked it is the ordinary forward
    keep_all, _, _, n = masking_rows(np.zeros((2, 16), bool))
    full = vit.forward_features(jt.array(x))
    np.testing.assert_allclose(vit.forward_visible(jt.array(x), keep_all, n)["patch"].numpy(),
                               full["patch"].numpy(), atol=1e-5)


def test_unshuffle_puts_patch_i_at_position_i():
    """Identity-like decoder: the visible rows of the patchified image, unshuffled with a zero mask
    token, are the image's patches in place and zeros where masked."""
    from models.mae import patchify, unshuffle
    x = np.random.default_rng(2).normal(size=(3, 3, 16, 16)).astype(np.float32)
    m = batch_masks(3, seed=5)
    keep, restore, flat, k = masking_rows(m)
    rows = patchify(jt.array(x), 4)  # (3, 16, 48)
    visible = rows.reshape(48, 48)[keep].reshape(3, k, 48)
    out = unshuffle(visible, jt.zeros((1, 1, 48)), restore, 16).numpy()
    np.testing.assert_array_equal(out, rows.numpy() * (1 - flat)[:, :, None])


# ----------------------------------------------------------------------------- losses
def test_norm_pix_loss_matches_numpy():
    rng = np.random.default_rng(3)
    pred, target = rng.normal(size=(2, 5, 12)), rng.normal(size=(2, 5, 12)) * 3 + 1
    mask = np.array([[1, 0, 1, 1, 0], [0, 0, 1, 0, 0]], np.float64)
    mu = target.mean(-1, keepdims=True)
    var = target.var(-1, ddof=1, keepdims=True)  # torch.var: unbiased
    t = (target - mu) / np.sqrt(var + 1e-6)
    ref = (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()
    ours = masked_mse(jt.array(pred.astype(np.float32)), norm_pix_target(jt.array(target.astype(np.float32))),
                      jt.array(mask.astype(np.float32)))
    assert abs(float(ours.item()) - ref) < 1e-5 * max(1.0, abs(ref))
    ln = layer_norm_target(jt.array(target.astype(np.float32))).numpy()
    np.testing.assert_allclose(ln, (target - mu) / np.sqrt(target.var(-1, keepdims=True) + 1e-6), atol=1e-5)


# ----------------------------------------------------------------------------- network and gradients
def _grads(method, loss):
    params = [(n, p) for n, p in method.student.named_parameters() if not p.is_stop_grad()]
    gs = jt.grad(loss, [p for _, p in params], retain_graph=True)
    return {n: float(np.abs(g.numpy()).max()) for (n, _), g in zip(params, gs)}


def test_hssl_gradients_reach_both_decoders_and_the_head_but_not_the_target():
    from jhssl.methods import build_model
    m = build_model(mae_config())
    x = np.random.default_rng(4).normal(size=(4, 3, 16, 16)).astype(np.float32)
    parts = m.compute_loss([x], [batch_masks(4)], 0)
    assert set(parts) == {"loss", "pix_head", "feat_base"}
    g = _grads(m, parts["loss"])
    groups = ("backbone.", "decoder.", "aux_head.", "aux_decoder.", "aux_mask_token")
    for prefix in groups:
        vals = [v for n, v in g.items() if n.startswith(prefix)]
        assert vals and max(vals) > 0, prefix
    assert "backbone.pos_embed" not in g  # fixed sin-cos, never trained
    assert min(g.values()) > 0, [n for n, v in g.items() if v == 0]  # every trained parameter
    # the representation target is a stop-gradient: the feature loss reaches neither the head nor
    # its pixel decoder, only the base encoder and its decoder
    gf = _grads(m, parts["feat_base"])
    assert max(v for n, v in gf.items() if n.startswith(("aux_head.", "aux_decoder.", "aux_mask_token"))) == 0
    assert max(v for n, v in gf.items() if n.startswith("decoder.")) > 0
    assert max(v for n, v in gf.items() if n.startswith("backbone.blocks")) > 0
    # the head's pixel loss does not reach the base's feature decoder
    gp = _grads(m, parts["pix_head"])
    assert max(v for n, v in gp.items() if n.startswith("decoder.")) == 0


def test_baseline_is_plain_mae():
    from jhssl.methods import build_model
    m = build_model(mae_config(hssl=False))
    keys = m.student.state_dict().keys()
    assert not any(k.startswith("aux") for k in keys) and m.teacher is None
    pos = m.student.backbone.pos_embed.numpy()[0]
    from models.layers.pos_embed import sincos_2d_pos_embed
    np.testing.assert_allclose(pos, sincos_2d_pos_embed(32, 4, 4, cls_token=True), atol=1e-6)
    x = np.random.default_rng(6).normal(size=(2, 3, 16, 16)).astype(np.float32)
    parts = m.compute_loss([x], [batch_masks(2)], 0)
    assert set(parts) == {"loss", "pix_base"} and np.isfinite(parts["loss"].item())
    with pytest.raises(ValueError, match="one view and one mask"):
        m.compute_loss([x, x], [batch_masks(2)], 0)


def test_config_errors_name_the_key():
    from jhssl.config import ConfigError
    with pytest.raises(ConfigError, match=r"data.local_crops_number.*'mae'"):
        mae_config(extra=["data.local_crops_number=2"])  # MAE takes one view, no multi-crop
    with pytest.raises(ConfigError, match="mae.mask_ratio"):
        mae_config(extra=["mae.mask_ratio=1.0"])
    with pytest.raises(ConfigError, match="mae.decoder_widht"):
        mae_config(extra=["mae.decoder_widht=3"])


# ----------------------------------------------------------------------------- training, resume, export
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("mae_imgs")), n_per_class=4)


def test_mid_epoch_resume_is_exact_and_export_drops_decoders(data_root, tmp_path):
    from jhssl import checkpoint as ck
    from jhssl.train import train
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    extra = ["eval_every=0", "save_every_iters=1"]
    quiet = dict(progress=False, log=lambda *a: None)
    train(mae_config(full, data_root, extra), resume=None, max_iters=2, **quiet)
    train(mae_config(part, data_root, extra), resume=None, max_iters=1, **quiet)  # stops mid-epoch
    train(mae_config(part, data_root, extra), resume="auto", max_iters=1, **quiet)
    a, b = step_records(full)[2], step_records(part)[2]
    for k in ("loss", "pix_head", "feat_base"):
        assert abs(a[k] - b[k]) < 1e-5, (k, a[k], b[k])
    state = ck.load_checkpoint(ck.latest_checkpoint(part))
    assert state["teacher"] is None and state["loss"] == {}
    ref = ck.load_checkpoint(ck.latest_checkpoint(full))["student"]
    for k, v in state["student"].items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-4, atol=1e-5, err_msg=k)

    from jhssl.knn import load_eval_network
    net, _ = load_eval_network(state, which="teacher")  # no teacher: k-NN reads the student
    np.testing.assert_array_equal(net.backbone.blocks[0].attn.qkv.weight.numpy(),
                                  state["student"]["backbone.blocks.0.attn.qkv.weight"])

    from jhssl.export import extract_base
    from jhssl.convert import ConversionReport
    report = ConversionReport()
    sd = extract_base(state, which="teacher", report=report)
    assert "exported the student" in " ".join(report.source)
    backbone = {k[len("backbone."):] for k in state["student"] if k.startswith("backbone.")}
    assert set(sd) == backbone and "mask_token" not in sd
    assert set(report.dropped.values()) == {"MAE decoder", "auxiliary head"}


def test_init_from_converted_encoder_leaves_head_and_decoders_fresh(tmp_path, capsys):
    """A converted (official-layout) MAE encoder starts MAE + HSSL: the encoder is loaded, decoders
    and head are the fresh initialisation, and the message says so."""
    from jhssl.methods import build_model
    from jhssl.safetensors_io import save_file
    donor = build_model(mae_config(hssl=False)).student
    # MAE's release layout: encoder keys at the top level + decoder_* keys + the decoder's mask_token
    sd = {k[len("backbone."):]: v.numpy() for k, v in donor.state_dict().items() if k.startswith("backbone.")}
    sd.update({"decoder_embed.weight": np.zeros((16, 32), np.float32), "mask_token": np.zeros((1, 1, 16), np.float32)})
    path = str(tmp_path / "mae_tiny.safetensors")
    save_file(sd, path)
    fresh = build_model(mae_config()).student
    m = build_model(mae_config(extra=[f"mae.init_from={path}"]))
    msg = capsys.readouterr().out
    assert "base encoder loaded" in msg and "MAE decoder" in msg and "aux_head" in msg and "aux_decoder" in msg
    np.testing.assert_array_equal(m.student.backbone.blocks[0].attn.qkv.weight.numpy(),
                                  sd["blocks.0.attn.qkv.weight"])
    assert m.student.backbone.pos_embed.is_stop_grad()
    assert m.student.aux_decoder.pred.weight.shape == fresh.aux_decoder.pred.weight.shape


FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Fashion-MNIST not installed")
def test_fashion_mnist_run_lowers_reconstruction_loss_and_writes_png(tmp_path):
    from PIL import Image
    from jhssl.train import train
    out = os.environ.get("JHSSL_MAE_DEMO_OUT") or str(tmp_path / "fm")  # set it to keep the PNGs
    cfg = mae_config(out, extra=[
        "data.dataset=fashion_mnist", f"data.path={FMNIST}", "data.subset=0.02", "data.global_crop_size=16",
        "data.global_crops_scale=[0.5,1.0]", "batch_size=32", "epochs=3", "eval_every=1", "optim.lr=5e-3",
        "optim.warmup_epochs=0", "optim.min_lr=0", "optim.weight_decay=0.05", "optim.weight_decay_end=0.05",
        "optim.clip_grad=0", "eval.train_subset=0.005", "eval.val_subset=0.01", "log_freq=1"])
    res = train(cfg, resume=None, progress=False, log=lambda *a: None)
    steps = step_records(out)
    its = sorted(steps)
    first = np.mean([steps[i]["pix_head"] for i in its[:3]])
    last = np.mean([steps[i]["pix_head"] for i in its[-3:]])
    assert last < first, (first, last)
    pngs = sorted(f for f in os.listdir(out) if f.startswith("reconstruction_"))
    assert pngs == ["reconstruction_0001.png", "reconstruction_0002.png", "reconstruction_0003.png"]
    w, h = Image.open(os.path.join(out, pngs[-1])).size
    assert w > h / 8 * 3 * 0.9  # 3 columns (input, masked, reconstruction) of 8 rows
    assert os.path.exists(os.path.join(out, "discrepancy.jsonl")) and res["knn"]


# ----------------------------------------------------------------------------- recipes
def _recipe(name, overrides=()):
    from _train_helpers import ROOT
    from jhssl.config import load_config
    return load_config(os.path.join(ROOT, "configs", name + ".yaml"), list(overrides))


def test_recipes_follow_mae_and_the_baseline_is_a_twin():
    hssl, base, demo = (_recipe("mae_hssl_vit_small_16"), _recipe("mae_hssl_vit_small_16_baseline"),
                        _recipe("mae_demo"))
    for c in (hssl, demo):
        assert c.method == "mae" and c.hssl.heads == ["convnext"] and c.hssl.depth == 3
        assert (c.mae.mask_ratio, c.mae.norm_pix_loss, c.optim.betas) == (0.75, True, [0.9, 0.95])
        assert (c.optim.weight_decay, c.optim.weight_decay_end, c.optim.clip_grad) == (0.05, 0.05, 0.0)
    assert (hssl.epochs, hssl.batch_size, hssl.optim.lr, hssl.optim.warmup_epochs, hssl.optim.min_lr) == \
        (400, 4096, 1.5e-4, 40, 0.0)
    assert (hssl.mae.decoder_embed_dim, hssl.mae.decoder_depth, hssl.mae.decoder_num_heads) == (384, 8, 12)
    assert hssl.data.global_crops_scale == [0.2, 1.0] and hssl.model.arch == "vit_small"
    a, b = hssl.to_dict(), base.to_dict()
    assert b.pop("hssl") is None and a.pop("hssl")
    a.pop("output_dir"), b.pop("output_dir")
    assert a == b


def test_vit_small_recipe_builds_and_steps():
    from jhssl.methods import build_model
    from jhssl.optim import AdamW, param_groups
    cfg = _recipe("mae_hssl_vit_small_16", ["data.global_crop_size=64", "mae.decoder_depth=1", "hssl.depth=1"])
    m = build_model(cfg)
    assert m.student.decoder.pred.weight.shape == (384, 384)          # predicts the head's 384 channels
    assert m.student.aux_decoder.pred.weight.shape == (16 * 16 * 3, 384)  # the head's decoder: RGB patches
    opt = AdamW(param_groups(m.student), lr=1e-4, betas=tuple(cfg.optim.betas), weight_decay=0.05)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    parts = m.compute_loss([x], [batch_masks(2, crop=64, patch=16)], 0)
    w = m.student.aux_decoder.pred.weight.numpy().copy()
    opt.backward(parts["loss"])
    opt.step()
    assert np.isfinite(parts["loss"].item()) and not np.allclose(m.student.aux_decoder.pred.weight.numpy(), w)


# ----------------------------------------------------------------------------- MPI
@pytest.mark.mpi
@pytest.mark.slow
def test_two_ranks_match_one_process_and_resume(tmp_path, data_root):
    """2 ranks x 2 images == 1 process x 4 images (the masks come from the per-sample generators),
    and every rank resumes from rank 0's mid-run checkpoint to the uninterrupted state."""
    import shutil
    import sys
    from test_mpi import MPIRUN, SCRIPTS, assert_ok, load_state, max_diff, mpi_cmd, run, step_losses
    if MPIRUN is None:
        pytest.skip("mpirun (OpenMPI) is not installed")
    extra = ["--method", "mae"] + TINY_MAE + ["model.drop_path_rate=0", "epochs=2", "log_freq=1", "save_every_iters=1"]
    single, dual = str(tmp_path / "single"), str(tmp_path / "dual")
    script = os.path.join(SCRIPTS, "train_run.py")
    p1, _ = run([sys.executable, script, "--out", single, "--data", data_root, "--max-iters", "3", *extra])
    assert_ok(p1)
    p2, _ = run(mpi_cmd("train_run.py", "--out", dual, "--data", data_root, "--max-iters", "3", *extra))
    assert_ok(p2)
    l1, l2 = step_losses(single), step_losses(dual)
    assert sorted(l1) == sorted(l2) == [1, 2, 3]
    for it in l1:
        assert abs(l1[it] - l2[it]) < 1e-4, (it, l1[it], l2[it])
    s1 = load_state(os.path.join(single, "state_rank0.npz"))
    r0, r1 = (load_state(os.path.join(dual, f"state_rank{r}.npz")) for r in (0, 1))
    assert not any(k.startswith("teacher.") for k in r0)
    assert max_diff(r0, r1) < 1e-6 and max_diff(s1, r0) < 1e-4
    resumed = str(tmp_path / "resumed")
    os.makedirs(resumed)
    shutil.copy(os.path.join(dual, "checkpoint_00000002.pkl"), resumed)
    p3, _ = run(mpi_cmd("train_run.py", "--out", resumed, "--data", data_root, "--max-iters", "1", "--resume", *extra))
    assert_ok(p3)
    assert max_diff(load_state(os.path.join(resumed, "state_rank0.npz")), r0) < 1e-5
    assert abs(step_losses(resumed)[3] - l2[3]) < 1e-5
