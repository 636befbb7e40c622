"""Shared helpers for the trainer tests: a tiny registered ViT, a tiny config, a synthetic ImageFolder."""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jhssl  # noqa: E402,F401


def register_tiny_vit():
    """``vit_test_tiny``: a ViT with dim 32, depth 2, 2 heads (the patch size is an argument)."""
    import models
    from models.registry import list_models, register_model
    import models.vit as vit
    if "vit_test_tiny" not in list_models():
        def vit_test_tiny(patch_size=4, **kwargs):
            cfg = dict(embed_dim=32, depth=2, num_heads=2, patch_size=patch_size)
            cfg.update(kwargs)
            return vit.VisionTransformer(**cfg)
        register_model(vit_test_tiny)
    return models


def tiny_overrides(output_dir, data_root=None, method="ibot"):
    o = [f"output_dir={output_dir}", f"method={method}", "model.arch=vit_test_tiny", "model.patch_size=4",
         "model.drop_path_rate=0.1", "hssl.depth=1", "data.global_crop_size=16",
         "batch_size=4", "num_workers=0", "epochs=2", "optim.warmup_epochs=1",
         "log_freq=1", "eval.knn_k=[3]", "eval.batch_size=8", "seed=3"]
    if method == "mocov3":  # MoCo v3 reads its own section (and no self-distillation keys)
        o += ["mocov3.proj_hidden_dim=32", "mocov3.proj_dim=16", "mocov3.pred_hidden_dim=32"]
    elif method == "mae":  # one view, its own section: a 1-block decoder of width 16
        o += ["mae.decoder_embed_dim=16", "mae.decoder_depth=1", "mae.decoder_num_heads=2"]
    else:
        o += ["model.out_dim=64", "model.patch_out_dim=64", "model.head_hidden_dim=32",
              "model.head_bottleneck_dim=16", "data.local_crop_size=8", "data.local_crops_number=1",
              "loss.warmup_teacher_temp_epochs=1"]
    if data_root:
        o += ["data.dataset=folder", f"data.path={data_root}/train", f"eval.val_path={data_root}/val"]
    return o


def tiny_config(output_dir="/tmp/jhssl_unused", data_root=None, extra=(), method="ibot"):
    from jhssl.config import load_config
    register_tiny_vit()
    return load_config(None, tiny_overrides(output_dir, data_root, method) + list(extra))


def step_records(out_dir):
    """The ``step`` records of a run's ``log.jsonl``, by iteration."""
    import os
    from jhssl.logging import read_jsonl
    return {r["iteration"]: r for r in read_jsonl(os.path.join(out_dir, "log.jsonl")) if r.get("type") == "step"}


def write_image_folder(root, n_per_class=4, classes=("a", "b"), size=20, seed=0):
    """root/{train,val}/<class>/<i>.png: class a is dark with a bright square, class b the reverse."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for ci, c in enumerate(classes):
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            for i in range(n_per_class):
                img = rng.integers(0, 60, (size, size, 3)) if ci == 0 else rng.integers(180, 255, (size, size, 3))
                img[5:12, 5:12] = 255 - img[5:12, 5:12]
                Image.fromarray(img.astype(np.uint8)).save(os.path.join(d, f"{i}.png"))
    return root
