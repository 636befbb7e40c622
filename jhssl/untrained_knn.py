"""The k-NN accuracy of the *untrained* network, the level a pretraining run has to beat.

A pretrained number means little alone: a random ViT already gets ~57% k-NN top-1 on
Fashion-MNIST. The trainer measures the teacher before its first step (the same evaluation as at
the end: same features, images, k, temperature) and keeps the result in a small JSON cache keyed by
a fingerprint of the evaluated weights and the evaluation settings, so the baseline and HSSL runs
of one seed (whose base models start from the same weights) measure it once.

Cache directory: ``$JHSSL_CACHE_DIR`` or ``~/.cache/jhssl`` (never inside the repository).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

__all__ = ["cache_dir", "fingerprint", "untrained_knn"]


def cache_dir() -> str:
    return os.environ.get("JHSSL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jhssl")


def fingerprint(cfg, module) -> str:
    """sha1 of the module's weights (name, shape, bytes) and of every setting the k-NN depends on."""
    h = hashlib.sha1()
    for name, v in sorted(module.state_dict().items()):
        a = np.ascontiguousarray(v.numpy())
        h.update(f"{name}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    d = cfg.data
    settings = {"eval": cfg.eval.to_dict(), "dataset": d.dataset, "path": d.path, "split": d.split,
                "mean": d.mean, "std": d.std, "crop": d.global_crop_size, "seed": cfg.seed}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def untrained_knn(cfg, network, evaluate, log=None):
    """``evaluate()`` -> ``{k: {top1, top5}}`` of ``network`` now, or the cached result for the
    same weights and settings. Returns (result, cached: bool)."""
    from jhssl import dist
    module = network.backbone if cfg.eval.features == "base" else network
    path = os.path.join(cache_dir(), "untrained_knn", fingerprint(cfg, module) + ".json")
    cached = None
    if dist.is_main():
        try:
            with open(path) as f:
                cached = {int(k): v for k, v in json.load(f).items()}
        except (OSError, ValueError):
            pass
    cached = dist.broadcast_object(cached)  # every rank takes rank 0's decision (the k-NN is collective)
    if cached is not None:
        return cached, True
    res = evaluate()
    if not dist.is_main():
        return res, False
    try:
        from jhssl.fileio import atomic_write_text
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, json.dumps({str(k): v for k, v in res.items()}))
    except OSError as e:  # a read-only home must not stop training
        if log:
            log(f"untrained k-NN not cached ({e})")
    return res, False
