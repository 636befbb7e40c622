"""Linear probe: separable features, independent multi-lr heads, DINO's feature layouts, the CLI."""
import json
import os

import numpy as np
import pytest

from _eval_helpers import run_tool, separable, tiny_checkpoint
from _train_helpers import register_tiny_vit


def _train(heads, lrs, feats, labels, epochs, batch=32, seed=0):
    from jhssl.eval.linear import cached_batches, make_optimizer, train_linear_heads
    opt = make_optimizer(heads, lrs)
    train_linear_heads(heads, opt, lambda e: cached_batches(feats, labels, batch, seed, e), epochs)


def test_linear_probe_separable_features_reach_100_percent():
    from jhssl.eval.linear import LinearHeads, evaluate_heads
    rng = np.random.default_rng(0)
    tr_f, tr_l = separable(rng, 40, 5, 16)
    va_f, va_l = separable(rng, 10, 5, 16)
    heads = LinearHeads(16, 5, 2)
    _train(heads, [0.1, 1e-6], tr_f, tr_l, epochs=10)
    res = evaluate_heads(heads, va_f, va_l)
    assert res[0]["top1"] == 100.0 and res[0]["top5"] == 100.0
    assert res[1]["top1"] < 90.0  # a tiny lr barely moves from the random start: the lr matters


def test_multi_lr_heads_train_independently():
    import jittor as jt
    from jhssl.eval.linear import LinearHeads
    rng = np.random.default_rng(1)
    f, y = separable(rng, 20, 3, 8, noise=1.0)
    both = LinearHeads(8, 3, 2)
    other = LinearHeads(8, 3, 2)
    alone = LinearHeads(8, 3, 1)
    for h in (other.heads[0], alone.heads[0]):
        h.weight.update(jt.array(both.heads[0].weight.numpy()))
        h.bias.update(jt.array(both.heads[0].bias.numpy()))
    other.heads[1].weight.update(jt.array(rng.normal(size=(3, 8)).astype(np.float32)))
    _train(both, [0.05, 0.5], f, y, epochs=3, batch=16)
    _train(other, [0.05, 5.0], f, y, epochs=3, batch=16)   # another lr and init for head 1
    _train(alone, [0.05], f, y, epochs=3, batch=16)
    w0 = both.heads[0].weight.numpy()
    assert not np.allclose(w0, 0.0)
    np.testing.assert_allclose(other.heads[0].weight.numpy(), w0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone.heads[0].weight.numpy(), w0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone.heads[0].bias.numpy(), both.heads[0].bias.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(both.heads[1].weight.numpy(), w0)


@pytest.mark.parametrize("n,avgpool", [(2, False), (1, True), (2, True)])
def test_feature_layouts_match_manual_computation(n, avgpool):
    import jittor as jt
    from jhssl.eval.features import default_layout, linear_feature_fn
    models = register_tiny_vit()
    jt.set_global_seed(0)
    vit = models.create_model("vit_test_tiny", patch_size=4, img_size=16)
    vit.eval()

    class Net:
        backbone = vit
    fn, desc = linear_feature_fn(Net(), "base", n, avgpool)
    assert desc == {"features": "base", "layout": "vit", "n_last_blocks": n, "avgpool_patchtokens": avgpool}
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    with jt.no_grad():
        got = fn(jt.array(x)).numpy()
        tokens, _ = vit.prepare_tokens(jt.array(x))
        normed = []
        for blk in vit.blocks:
            tokens = blk(tokens)
            normed.append(vit.norm(tokens).numpy())
        last_cls = vit(jt.array(x)).numpy()
    parts = [o[:, 0] for o in normed[-n:]] + ([normed[-1][:, 1:].mean(axis=1)] if avgpool else [])
    np.testing.assert_allclose(got, np.concatenate(parts, axis=1), rtol=1e-5, atol=1e-5)
    assert got.shape == (3, 32 * (n + int(avgpool)))
    np.testing.assert_allclose(normed[-1][:, 0], last_cls, rtol=1e-5, atol=1e-5)


def test_default_layout_follows_dino():
    from jhssl.eval.features import default_layout

    class Small:
        embed_dim, blocks = 384, [0] * 12

    class Base:
        embed_dim, blocks = 768, [0] * 12
    assert default_layout(Small()) == (4, False) and default_layout(Base()) == (1, True)


def test_lr_grid_must_be_positive():
    from jhssl.config import ConfigError
    from jhssl.eval.config import load_eval_config
    for bad in ("lrs=[0.1,0.0]", "lrs=[-1e-3]", "lrs=[]"):
        with pytest.raises(ConfigError, match="lrs"):
            load_eval_config("linear", None, [bad])
    tool = run_tool("eval_linear")
    assert tool.main(["--checkpoint", "/nonexistent.pkl", "lrs=[0.0]"]) == 2


def test_cli_cached_mode_and_bad_inputs(tmp_path, capsys):
    import jittor as jt
    path, root = tiny_checkpoint(tmp_path)
    tool = run_tool("eval_linear")
    out = str(tmp_path / "lin")
    assert tool.main(["--checkpoint", path, "mode=cached", "epochs=2", "batch_size=4", "num_workers=0",
                      "lrs=[0.01,0.1]", f"output_dir={out}", "label_fraction=0.5"]) == 0
    res = json.load(open(os.path.join(out, "linear_results.json")))
    assert res["mode"] == "cached" and "computed once" in res["mode_note"]
    assert [r["lr"] for r in res["per_lr"]] == [0.01, 0.1] and res["n_last_blocks"] == 2
    assert res["train_images"] == 4 and os.path.isfile(res["label_subset_file"])
    assert os.path.isfile(os.path.join(out, "linear_curves.png"))
    assert "best top-1" in capsys.readouterr().out
    # the protocol's own mode: augmented crops through the frozen network
    out2 = str(tmp_path / "lin2")
    assert tool.main(["--checkpoint", path, "epochs=1", "batch_size=4", "num_workers=0", "lrs=[0.01]",
                      f"output_dir={out2}", "features=head"]) == 0
    res2 = json.load(open(os.path.join(out2, "linear_results.json")))
    assert res2["mode"] == "augment" and res2["features"] == "head"

    # a checkpoint without a base model: a clear error, no output written
    bad = str(tmp_path / "nobase.pkl")
    jt.save({"config": json.loads(json.dumps(res["config"])), "teacher": {"head.w": np.zeros(2)}}, bad)
    capsys.readouterr()
    assert tool.main(["--checkpoint", bad, f"output_dir={tmp_path / 'x'}"]) == 2
    assert "no base model" in capsys.readouterr().err and not os.path.exists(tmp_path / "x")
    # train and val with different class counts
    os.makedirs(os.path.join(root, "val", "c"))
    from PIL import Image
    Image.new("RGB", (20, 20)).save(os.path.join(root, "val", "c", "0.png"))
    assert tool.main(["--checkpoint", path, f"output_dir={tmp_path / 'y'}"]) == 2
    err = capsys.readouterr().err
    assert "has 2 classes but the val data" in err and not os.path.exists(tmp_path / "y")


def test_cli_reads_a_checkpoint_without_teacher(tmp_path, capsys):
    """MAE checkpoints store ``teacher: None``: the probe evaluates the student, as the k-NN does."""
    path, _ = tiny_checkpoint(tmp_path, method="mae", extra=("optim.betas=[0.9,0.95]",))
    tool = run_tool("eval_linear")
    out = str(tmp_path / "lin")
    assert tool.main(["--checkpoint", path, "mode=cached", "epochs=1", "batch_size=4", "num_workers=0",
                      "lrs=[0.1]", f"output_dir={out}"]) == 0
    assert json.load(open(os.path.join(out, "linear_results.json")))["per_lr"][0]["lr"] == 0.1
