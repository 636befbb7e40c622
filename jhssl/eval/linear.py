"""Linear probing of frozen features (DINO / iBOT ``eval_linear.py``), many learning rates at once
(DINOv2 ``eval/linear.py``).

* one BatchNorm-free linear layer per learning rate (weights N(0, 0.01), bias 0, as DINO), all
  trained on the same batches; the loss is the sum of the heads' cross-entropies, so each head's
  gradient is that of its own loss: the heads are independent;
* SGD, momentum 0.9, weight decay 0; lr = grid value x batch / 256, cosine-annealed to 0 per epoch
  (DINO: ``CosineAnnealingLR(epochs, eta_min=0)``); 100 epochs by default;
* mode ``augment`` (the protocol): each epoch the frozen network sees RandomResizedCrop + flip
  crops of the train images; mode ``cached``: the features of the un-augmented train images are
  computed once and reused every epoch (much faster on a CPU; not the paper's protocol, and the
  result file says which mode ran);
* validation: resize + centre crop; the frozen val features are computed once; top-1 / top-5 per
  head; the head with the best final top-1 is reported with its lr.
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np

import jhssl  # noqa: F401
import jittor as jt
from jittor import nn

from jhssl import dist
from jhssl.eval.common import topk_accuracy

__all__ = ["LinearHeads", "train_linear_heads", "evaluate_heads", "run_linear_probe"]


class LinearHeads(nn.Module):
    """``len(lrs)`` independent linear classifiers on the same features."""

    def __init__(self, dim: int, num_classes: int, n: int):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(dim, num_classes) for _ in range(n)])
        for h in self.heads:
            jt.init.gauss_(h.weight, 0.0, 0.01)
            jt.init.zero_(h.bias)

    def execute(self, f):
        return [h(f) for h in self.heads]


def make_optimizer(heads: LinearHeads, lrs, momentum=0.9, weight_decay=0.0):
    groups = [{"params": h.parameters(), "lr": float(lr), "base_lr": float(lr)} for h, lr in zip(heads.heads, lrs)]
    return jt.optim.SGD(groups, lr=float(lrs[0]), momentum=momentum, weight_decay=weight_decay)


def heads_loss(logits, labels):
    return sum(nn.cross_entropy_loss(lg, labels) for lg in logits)


def evaluate_heads(heads: LinearHeads, feats: np.ndarray, labels: np.ndarray) -> list:
    """[{"top1", "top5"}] per head, computed in numpy from the heads' current weights."""
    out = []
    for h in heads.heads:
        logits = feats @ h.weight.numpy().T + h.bias.numpy()
        out.append(topk_accuracy(logits, labels))
    return out


def cached_batches(feats, labels, batch_size, seed, epoch):
    """This rank's share of each global batch of a (seed, epoch) permutation of cached features."""
    order = np.random.default_rng([int(seed), int(epoch), 0x11EA]).permutation(len(feats))
    ws, r = dist.world_size(), dist.rank()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        per = -(-len(idx) // ws)
        mine = idx[r * per:(r + 1) * per]
        if len(mine):
            yield feats[mine], labels[mine]


def train_linear_heads(heads, optimizer, batches_per_epoch, epochs: int, log=None, on_epoch_end=None,
                       progress: bool = False):
    """``batches_per_epoch(epoch)`` yields (features Var/ndarray (B, D), labels) batches; the lr of every
    group is its ``base_lr`` x the per-epoch cosine factor."""
    for epoch in range(epochs):
        factor = 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        heads.train()
        total, n = 0.0, 0
        it = batches_per_epoch(epoch)
        if progress and dist.is_main():
            from tqdm import tqdm
            it = tqdm(it, desc=f"linear epoch {epoch + 1}/{epochs}", leave=False)
        for f, y in it:
            f = f if isinstance(f, jt.Var) else jt.array(np.asarray(f, np.float32))
            y = y if isinstance(y, jt.Var) else jt.array(np.asarray(y, np.int32))
            loss = heads_loss(heads(f.stop_grad()), y)
            optimizer.step(loss)
            total += float(loss.item())
            n += 1
        if on_epoch_end is not None:
            on_epoch_end(epoch, total / max(n, 1) / len(heads.heads))


def run_linear_probe(ecfg, network, pcfg, checkpoint: str = "", feature_desc=None, feature_fn=None,
                     log=print, progress: bool = True) -> dict:
    """The whole probe from the tool config ``ecfg``; writes ``linear_results.json``, ``log.jsonl``,
    ``linear_curves.png`` and the label subset list (semi-supervised) into ``ecfg.output_dir``."""
    from jhssl.eval.augment import ClassifierTrainTransform
    from jhssl.eval.common import build_sources, eval_dataset, image_size, train_dataset
    from jhssl.eval.features import linear_feature_fn
    from jhssl.fileio import atomic_write_text
    from jhssl.knn import extract_features
    from jhssl.logging import JsonlLogger

    main = dist.is_main()
    os.makedirs(ecfg.output_dir, exist_ok=True)
    subset_path = os.path.join(ecfg.output_dir, "label_subset.txt") if main else None
    has_subset = ecfg.label_fraction < 1.0 or bool(ecfg.label_subset_file)
    train_src, val_src, classes = build_sources(pcfg, ecfg, subset_path if has_subset else None)
    if feature_fn is None:
        feature_fn, feature_desc = linear_feature_fn(network, ecfg.features, ecfg.n_last_blocks,
                                                     ecfg.avgpool_patchtokens)
    dist.check_batch_size(ecfg.batch_size)
    t0 = time.time()
    val_f, val_l = extract_features(feature_fn, eval_dataset(val_src, pcfg, ecfg), progress=progress and main)
    dim = val_f.shape[1]
    lrs_scaled = [lr * ecfg.batch_size / ecfg.lr_ref_batch for lr in ecfg.lrs]
    jt.set_global_seed(ecfg.seed)
    heads = LinearHeads(dim, len(classes), len(lrs_scaled))
    jt.sync(list(heads.state_dict().values()))  # draw the initial weights now, in one graph
    dist.broadcast_module(heads)  # rank 0's start on every rank (the seed differs per rank)
    optimizer = make_optimizer(heads, lrs_scaled, ecfg.momentum, ecfg.weight_decay)

    if ecfg.mode == "cached":
        tr_f, tr_l = extract_features(feature_fn, eval_dataset(train_src, pcfg, ecfg), progress=progress and main)

        def batches(epoch):
            return cached_batches(tr_f, tr_l, ecfg.batch_size, ecfg.seed, epoch)
    else:
        tf = ClassifierTrainTransform(image_size(pcfg, ecfg), ecfg.train_scale, pcfg.data.mean, pcfg.data.std)
        train_ds = train_dataset(train_src, tf, pcfg, ecfg, drop_last=False)

        def batches(epoch):
            train_ds.set_epoch(epoch)
            for crops, _masks, labels in train_ds:
                with jt.no_grad():
                    f = feature_fn(jt.array(crops[0])).stop_grad()
                yield f, labels
    logger = JsonlLogger(os.path.join(ecfg.output_dir, "log.jsonl"), enabled=main)
    history = []

    def on_epoch_end(epoch, loss):
        last = epoch == ecfg.epochs - 1
        rec = {"type": "epoch", "epoch": epoch + 1, "loss_per_head": loss}
        if last or (ecfg.eval_every and (epoch + 1) % ecfg.eval_every == 0):
            res = evaluate_heads(heads, val_f, val_l)
            rec["top1"] = [r["top1"] for r in res]
            rec["top5"] = [r["top5"] for r in res]
            if log and main:
                b = int(np.argmax(rec["top1"]))
                log(f"epoch {epoch + 1}/{ecfg.epochs}: loss {loss:.4f}, best top-1 {rec['top1'][b]:.2f}% "
                    f"(lr {ecfg.lrs[b]:g})")
        history.append(rec)
        logger.write(rec)

    train_linear_heads(heads, optimizer, batches, ecfg.epochs, on_epoch_end=on_epoch_end, progress=progress)
    final = evaluate_heads(heads, val_f, val_l)
    best = int(np.argmax([r["top1"] for r in final]))
    result = {
        "protocol": "linear probe (DINO eval_linear; multi-lr as DINOv2)",
        "mode": ecfg.mode,
        "mode_note": ("features of un-augmented train images computed once (not the paper's protocol)"
                      if ecfg.mode == "cached" else "frozen network on RandomResizedCrop+flip crops every epoch"),
        "checkpoint": checkpoint, "which": ecfg.which, **(feature_desc or {}), "feature_dim": int(dim),
        "epochs": ecfg.epochs, "batch_size": ecfg.batch_size, "train_images": int(len(train_src)),
        "val_images": int(len(val_l)), "num_classes": len(classes),
        "label_fraction": ecfg.label_fraction, "label_seed": ecfg.label_seed,
        "label_subset_file": (subset_path if has_subset else None),
        "per_lr": [{"lr": lr, "lr_scaled": s, **r} for lr, s, r in zip(ecfg.lrs, lrs_scaled, final)],
        "best": {"lr": ecfg.lrs[best], **final[best]},
        "seconds": round(time.time() - t0, 1), "config": ecfg.to_dict(),
    }
    if main:
        atomic_write_text(os.path.join(ecfg.output_dir, "linear_results.json"), json.dumps(result, indent=1))
        _plot_curves(history, ecfg, os.path.join(ecfg.output_dir, "linear_curves.png"))
    return result


def _plot_curves(history, ecfg, path):
    from jhssl.plots import plot_lines_png
    series = {}
    for rec in history:
        for lr, t in zip(ecfg.lrs, rec.get("top1", [])):
            series.setdefault(f"lr {lr:g}", []).append((rec["epoch"], t))
    if series:
        plot_lines_png(path, series, title=f"linear probe ({ecfg.mode}): val top-1 % per lr", xlabel="epoch")
