"""A tiny pretraining checkpoint (ViT dim 32, depth 2, patch 4, 16 px, HSSL head) on a synthetic folder."""
import os

import numpy as np

from _train_helpers import register_tiny_vit, tiny_config, write_image_folder


def tiny_checkpoint(tmp_path, hssl=True, n_per_class=4, classes=("a", "b"), extra=(), method="ibot"):
    """(checkpoint path, data root): an untrained tiny ViT (+ auxiliary head) saved like the trainer does."""
    import jittor as jt
    from jhssl.checkpoint import to_numpy_state
    from jhssl.methods import build_model
    register_tiny_vit()
    root = write_image_folder(str(tmp_path / "data"), n_per_class=n_per_class, classes=classes)
    cfg = tiny_config(str(tmp_path / "pre"), root, extra=(() if hssl else ("hssl=null",)) + tuple(extra),
                      method=method)
    jt.set_global_seed(0)
    built = build_model(cfg)
    ckpt = {"config": cfg.to_dict(), "student": to_numpy_state(built.student),  # MAE: no teacher, as the trainer
            "teacher": to_numpy_state(built.teacher) if built.teacher is not None else None,
            "epoch": 1, "iteration": 1}
    path = str(tmp_path / "ckpt.pkl")
    jt.save(ckpt, path)
    return path, root


def run_tool(name):
    import sys
    run_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run")
    if run_dir not in sys.path:
        sys.path.insert(0, run_dir)
    import importlib
    return importlib.import_module(name)


def separable(rng, n_per_class, C, d, noise=0.1):
    centers = np.eye(d)[:C] * 3.0
    y = np.repeat(np.arange(C), n_per_class)
    return (centers[y] + noise * rng.normal(size=(len(y), d))).astype(np.float32), y
