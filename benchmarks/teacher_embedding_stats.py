"""What a self-distillation teacher computes on clean Fashion-MNIST test images (issue 11's diagnosis).

    python benchmarks/teacher_embedding_stats.py CHECKPOINT [--images 512]

Prints, for the teacher of a DINO/iBOT trainer checkpoint: the mean pairwise cosine of the base CLS
features and of the projection bottleneck z across images (near 1: every image maps to the same
point), the spread of each image's prototype logits (cosine units; a random unit vector in d
dimensions gives ~1/sqrt(d)), the teacher's target entropy at its temperature after centering (ln K
is uniform), how many prototypes win an argmax, and the prototypes' effective rank (prototype
collapse). The checkpoint is read through the allow-list loader.
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jhssl  # noqa: E402,F401  (Jittor's environment first)


def mean_pairwise_cos(a):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    c = a @ a.T
    return float(c[~np.eye(len(c), dtype=bool)].mean())


def effective_rank(w):
    s = np.linalg.svd(w / np.linalg.norm(w, axis=1, keepdims=True), compute_uv=False) ** 2
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p + 1e-12)).sum()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--images", type=int, default=512)
    args = ap.parse_args(argv)
    import jittor as jt
    from jhssl.config import config_from_dict
    from jhssl.data.sources import find_idx_file, read_idx
    from jhssl.methods import build_model
    from jhssl.weights_io import load_checkpoint

    ck = load_checkpoint(args.checkpoint)
    cfg = config_from_dict(ck["config"])
    if cfg.method not in ("dino", "ibot"):
        raise SystemExit(f"{args.checkpoint}: method {cfg.method!r} has no prototypes (DINO/iBOT checkpoints only)")
    net = build_model(cfg).teacher
    net.load_state_dict({k: jt.array(np.asarray(v)) for k, v in ck["teacher"].items()})
    net.eval()
    raw = read_idx(find_idx_file(cfg.data.path, "test", "images"))[:args.images]
    size = cfg.data.global_crop_size
    x = raw.astype(np.float32) / 255.0
    if x.shape[-1] != size:
        raise SystemExit(f"recipe crop {size} px differs from the 28 px images: not supported by this tool")
    x = (np.repeat(x[:, None], 3, 1) - np.array(cfg.data.mean, np.float32)[:, None, None]) / \
        np.array(cfg.data.std, np.float32)[:, None, None]
    with jt.no_grad():
        feat = net.backbone(jt.array(x))
        z = net.head(feat)
        logits = net.last_layer(z).numpy()
        feat, z = feat.numpy(), z.numpy()
    center = np.asarray(ck["loss"]["center"]).reshape(-1)
    t = (logits - center) / cfg.loss.teacher_temp
    p = np.exp(t - t.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    w = np.asarray(ck["teacher"].get("last_layer.weight_v", ck["teacher"].get("last_layer.weight")))
    rows = {
        "base CLS, mean pairwise cos": mean_pairwise_cos(feat),
        "bottleneck z, mean pairwise cos": mean_pairwise_cos(z),
        "logit std over prototypes (cos units)": float(logits.std(1).mean()),
        f"target entropy at T={cfg.loss.teacher_temp} (ln K = {np.log(logits.shape[1]):.2f})":
            float(-(p * np.log(p + 1e-12)).sum(1).mean()),
        "prototypes winning an argmax": int(len(set(p.argmax(1)))),
        f"prototype effective rank (of {w.shape[1]})": effective_rank(w.reshape(w.shape[0], -1)),
    }
    for k, v in rows.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
