"""Fine-tuning: layer-wise lr decay, mixup/cutmix targets, augmentations, exact resume, semi-supervised subsets."""
import json
import os

import numpy as np
import pytest

from _eval_helpers import run_tool, tiny_checkpoint
from _train_helpers import register_tiny_vit


def test_layer_decay_multipliers_follow_beit_formula():
    import jittor as jt
    from jhssl.eval.finetune import FinetuneClassifier, layer_decay_param_groups
    models = register_tiny_vit()
    jt.set_global_seed(0)
    vit = models.create_model("vit_test_tiny", patch_size=4, img_size=16, use_mask_token=True)
    model = FinetuneClassifier(vit, num_classes=3, pooling="mean")
    d, depth = 0.65, 2
    groups = layer_decay_param_groups(model, d, weight_decay=0.05)
    scale, wd = {}, {}
    for g in groups:
        for n in g["names"]:
            scale[n], wd[n] = g["lr_scale"], g["weight_decay"]
    expected = {"backbone.cls_token": d ** 3, "backbone.pos_embed": d ** 3, "backbone.patch_embed.proj.weight": d ** 3,
                "backbone.blocks.0.attn.qkv.weight": d ** 2, "backbone.blocks.0.norm1.weight": d ** 2,
                "backbone.blocks.1.mlp.fc2.bias": d ** 1, "fc_norm.weight": 1.0, "head.weight": 1.0, "head.bias": 1.0}
    for n, s in expected.items():
        assert scale[n] == pytest.approx(s), n
    # every trained parameter: scale = d ** (depth + 1 - layer id), layer id from the block number
    for n, s in scale.items():
        lid = 0 if n.split(".")[1] in ("cls_token", "pos_embed", "patch_embed") else \
            int(n.split(".")[2]) + 1 if n.startswith("backbone.blocks.") else depth + 1
        assert s == pytest.approx(d ** (depth + 1 - lid)), n
    assert wd["head.weight"] == 0.05 and wd["backbone.blocks.0.attn.qkv.weight"] == 0.05
    assert wd["head.bias"] == 0.0 and wd["backbone.pos_embed"] == 0.0 and wd["backbone.cls_token"] == 0.0
    assert wd["fc_norm.weight"] == 0.0
    # mean pooling reads neither the mask token nor the final norm: they are not optimised
    assert "backbone.mask_token" not in scale and "backbone.norm.weight" not in scale
    assert "backbone.norm.weight" in {n for g in layer_decay_param_groups(
        FinetuneClassifier(vit, 3, pooling="cls"), d, 0.05) for n in g["names"]}


def test_mixup_cutmix_targets_sum_to_one():
    from jhssl.eval.augment import mixup_cutmix
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3, 16, 16)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0])
    seen = set()
    for s in range(40):
        mixed, t, lam = mixup_cutmix(x, y, 5, np.random.default_rng(s), smoothing=0.1)
        np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
        assert t.shape == (6, 5) and 0.0 <= lam <= 1.0
        # each row puts lam (+ smoothing) on its own label and 1 - lam on the reversed batch's
        off = 0.1 / 5
        exp = np.full((6, 5), off)
        exp[np.arange(6), y] += lam * 0.9
        exp[np.arange(6), y[::-1]] += (1 - lam) * 0.9
        np.testing.assert_allclose(t, exp, rtol=1e-5, atol=1e-6)
        kept = np.isclose(mixed, x).all(axis=1)              # (B, H, W): pixel from the image itself
        pasted = np.isclose(mixed, x[::-1]).all(axis=1)      # pixel from the reversed batch
        if (kept | pasted).all():
            seen.add("cutmix")
            assert kept[0].mean() == pytest.approx(lam, abs=1e-6)  # lam = the kept area
        else:
            seen.add("mixup")
            np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-5)
    assert seen == {"cutmix", "mixup"}


def test_rand_augment_and_erasing_are_seeded():
    from PIL import Image
    from jhssl.eval.augment import ClassifierTrainTransform, RAND_AUGMENT_OPS, parse_rand_augment
    assert parse_rand_augment("rand-m9-mstd0.5-inc1") == {"magnitude": 9.0, "mstd": 0.5, "num_ops": 2,
                                                         "increasing": True}
    assert len(RAND_AUGMENT_OPS) == 15
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3)).astype(np.uint8))
    tf = ClassifierTrainTransform(16, rand_augment="rand-m9-mstd0.5-inc1", reprob=0.25)
    a, b = tf(img, np.random.default_rng(5))[0], tf(img, np.random.default_rng(5))[0]
    np.testing.assert_array_equal(a, b)
    ops = []
    for s in range(60):
        tf.rand_augment(img, np.random.default_rng(s), ops)
    assert len({name for name, _ in ops}) > 8 and all(0 <= level <= 10 for _, level in ops)


def test_every_rand_augment_op_accepts_every_level():
    """The magnitude noise clips to the top level, where increasing posterize kept 0 bits (a crash
    in the first real fine-tuning run)."""
    from PIL import Image
    from jhssl.eval.augment import RAND_AUGMENT_OPS
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 12, 3)).astype(np.uint8))
    for name, op in RAND_AUGMENT_OPS.items():
        for level in (0.0, 5.0, 9.99, 10.0):
            out = op(img, level, np.random.default_rng(0), (128, 128, 128))
            assert out.size == img.size, (name, level)


def _final_state(out):
    from jhssl.checkpoint import latest_checkpoint
    from jhssl.weights_io import load_checkpoint
    return load_checkpoint(latest_checkpoint(out))


def test_finetune_resume_is_exact(tmp_path):
    path, root = tiny_checkpoint(tmp_path)
    tool = run_tool("finetune")
    common = ["--checkpoint", path, "--no-progress", "epochs=2", "warmup_epochs=1", "batch_size=4", "num_workers=0",
              "eval_every=1", "drop_path=0.1", "lr=1e-2", "eval_batch_size=8"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert tool.main(common + [f"output_dir={a}"]) == 0
    assert tool.main(common + [f"output_dir={b}", "--max-iters", "2"]) == 0   # one epoch (8 images / 4)
    assert _final_state(b)["epoch"] == 1
    assert tool.main(common + [f"output_dir={b}"]) == 0                       # resumes at epoch 1
    sa, sb = _final_state(a), _final_state(b)
    assert sa["epoch"] == sb["epoch"] == 2 and sa["iteration"] == sb["iteration"] == 4
    for k, v in sa["model"].items():
        np.testing.assert_array_equal(v, sb["model"][k], err_msg=k)
    moved = [k for k, v in sa["model"].items() if k.startswith("backbone.blocks")]
    ra = json.load(open(os.path.join(a, "finetune_results.json")))
    rb = json.load(open(os.path.join(b, "finetune_results.json")))
    assert moved and ra["top1"] == rb["top1"] and ra["pooling"] == "mean"
    assert [h["loss"] for h in ra["history"]] == [h["loss"] for h in rb["history"]]


def test_label_subsets_are_class_balanced_and_fixed_by_seed(tmp_path):
    from jhssl.data.sources import SubsetSource
    from jhssl.eval.semisup import apply_label_subset, label_subset, read_label_subset

    class Source:
        labels = np.repeat(np.arange(10), 200)[np.random.default_rng(0).permutation(2000)]
        classes = [str(i) for i in range(10)]

        def __len__(self):
            return len(self.labels)

        def describe(self, i):
            return f"img{i}.png"
    src = Source()
    for frac, per in ((0.01, 2), (0.1, 20)):
        idx = label_subset(src.labels, frac, seed=3)
        assert np.array_equal(np.bincount(src.labels[idx], minlength=10), np.full(10, per))
        assert np.array_equal(idx, label_subset(src.labels, frac, seed=3))
        assert not np.array_equal(idx, label_subset(src.labels, frac, seed=4))
    path = str(tmp_path / "subset.txt")
    sub = apply_label_subset(src, 0.1, 3, write_to=path)
    assert isinstance(sub, SubsetSource) and np.array_equal(read_label_subset(path), sub.indices)
    again = apply_label_subset(src, 1.0, 0, subset_file=path)
    assert np.array_equal(again.indices, sub.indices)
    assert open(path).read().splitlines()[1].endswith(f"img{sub.indices[0]}.png")


def test_table_xxi_configs():
    from jhssl.eval.config import load_eval_config
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "eval")
    got = {n: load_eval_config("finetune", os.path.join(root, f"finetune_{n}.yaml"))
           for n in ("ibot_vit_small_16", "ibot_vit_base_16", "mae_vit_small_16")}
    assert [(c.epochs, c.warmup_epochs, c.lr, c.batch_size, c.drop_path, c.layer_decay) for c in got.values()] == [
        (100, 5, 5e-4, 1024, 0.1, 0.65), (100, 5, 5e-4, 1024, 0.2, 0.60), (200, 5, 5e-4, 1024, 0.1, 0.80)]
    c = got["ibot_vit_small_16"]
    assert (c.label_smoothing, c.mixup, c.cutmix, c.reprob, c.rand_augment) == (0.1, 0.8, 1.0, 0.25,
                                                                                "rand-m9-mstd0.5-inc1")


def test_finetune_steps_keep_the_allocator_cache(tmp_path, monkeypatch):
    # as the pretraining loop (tests/test_train.py): no jt.gc() per step, which on a GPU would also
    # hand Jittor's whole CUDA memory cache back every iteration
    import sys
    import jittor as jt
    path, _ = tiny_checkpoint(tmp_path)
    callers = []
    real_gc = jt.gc
    monkeypatch.setattr(jt, "gc", lambda: (callers.append(sys._getframe(1).f_code.co_filename), real_gc()))
    assert run_tool("finetune").main(["--checkpoint", path, "--no-progress", "epochs=1", "batch_size=4",
                                      "num_workers=0", f"output_dir={tmp_path / 'ft'}", "eval_batch_size=8"]) == 0
    assert not [c for c in callers if c.endswith(os.path.join("eval", "finetune.py"))]
