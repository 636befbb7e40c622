"""End-to-end fine-tuning of a pretrained base model: the BEiT/iBOT recipe the paper uses (Table XXI).

* classifier: iBOT's fine-tuning runs BEiT's code with ``use_mean_pooling=True``: LayerNorm of the
  mean of the last block's (pre-norm) patch tokens, then a linear layer (``pooling='mean'``, the
  default; the ViT's own final norm is then unused). ``pooling='cls'`` is BEiT's ``--use_cls``
  (the final norm's CLS token). Non-ViT bases use their pooled feature. The linear layer is
  initialised trunc-normal(0.02) x ``init_scale`` (0.001), bias 0 (BEiT);
* AdamW (0.9, 0.999), weight decay 0.05 except biases, 1-D parameters, ``pos_embed``,
  ``cls_token``; layer-wise lr decay: parameter group lr = lr x decay^(depth + 1 - layer_id) with
  BEiT's ids (embeddings 0, block i -> i + 1, final norm / classifier depth + 1);
* lr = base lr x batch / 256, linear warm-up from 1e-6 for 5 epochs then cosine to 1e-6, per
  iteration; drop path; label smoothing 0.1 with mixup 0.8 / cutmix 1.0 (soft-target cross-entropy);
  RandAugment + random erasing (:mod:`jhssl.eval.augment`);
* checkpoints at every epoch end, atomic (``checkpoint_<iteration>.pkl``), resumed exactly: the
  sample order and augmentations are functions of (seed, epoch, index), mixup of (seed, iteration,
  rank), drop path re-seeded every iteration, the optimizer state restored;
* under ``mpirun``: the batch is global, Jittor averages the gradients; evaluation gathers logits
  over ranks.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

import jhssl  # noqa: F401
import jittor as jt
from jittor import nn

from jhssl import checkpoint as ckpt_lib
from jhssl import dist
from jhssl.eval.common import topk_accuracy
from models.layers.cross_entropy import soft_cross_entropy

__all__ = ["FinetuneClassifier", "vit_layer_id", "layer_decay_param_groups", "soft_target_cross_entropy",
           "finetune"]


class FinetuneClassifier(nn.Module):
    def __init__(self, backbone, num_classes: int, pooling: str = "mean", init_scale: float = 0.001):
        super().__init__()
        from models.layers import trunc_normal_
        from models.layers.fast_norm import LayerNorm
        self.backbone = backbone
        self.is_vit = hasattr(backbone, "get_intermediate_layers")
        self.pooling = pooling if self.is_vit else "pooled"
        dim = backbone.num_features
        self.fc_norm = LayerNorm(dim, eps=1e-6) if self.pooling == "mean" else None
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        self.head.weight.update(self.head.weight * init_scale)
        jt.init.zero_(self.head.bias)

    def unused_parameter_names(self) -> set:
        """Base-model parameters the classifier never reads (kept out of the optimizer)."""
        names = set()
        for n, _ in self.backbone.named_parameters():
            if n.startswith("mask_token") or (self.pooling == "mean" and n.startswith("norm.")):
                names.add("backbone." + n)
        return names

    def features(self, x):
        out = self.backbone.forward_features(x)
        if self.pooling == "mean":
            return self.fc_norm(out["head_input"].mean(dim=1))
        return out["cls"]

    def execute(self, x):
        return self.head(self.features(x))


def vit_layer_id(name: str, depth: int) -> int:
    """BEiT's ``get_num_layer_for_vit`` for a classifier parameter name (``backbone.`` prefix)."""
    if not name.startswith("backbone."):
        return depth + 1  # classifier, fc_norm
    n = name[len("backbone."):]
    if n.split(".")[0] in ("cls_token", "mask_token", "pos_embed", "patch_embed"):
        return 0
    if n.startswith("blocks."):
        return int(n.split(".")[1]) + 1
    return depth + 1  # the final norm


def layer_decay_param_groups(model: FinetuneClassifier, layer_decay: float, weight_decay: float) -> list:
    """AdamW parameter groups (one per layer id and decay/no-decay) with ``lr_scale``."""
    if not model.is_vit and layer_decay < 1.0:
        raise ValueError(f"layer-wise lr decay is defined for ViT bases (blocks.N); the base "
                         f"{type(model.backbone).__name__} needs layer_decay=1.0")
    depth = len(model.backbone.blocks) if model.is_vit else 0
    skip = {"backbone." + k for k in model.backbone.no_weight_decay()} if hasattr(model.backbone, "no_weight_decay") \
        else set()
    unused = model.unused_parameter_names()
    groups = {}
    for name, p in model.named_parameters():
        if name in unused or p.is_stop_grad():
            continue
        lid = vit_layer_id(name, depth) if model.is_vit else 0
        no_decay = len(p.shape) == 1 or name.endswith(".bias") or name in skip
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "layer_id": lid,
                           "lr_scale": float(layer_decay ** ((depth + 1) - lid)) if model.is_vit else 1.0,
                           "weight_decay": 0.0 if no_decay else float(weight_decay)}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def soft_target_cross_entropy(logits, target):
    """timm's SoftTargetCrossEntropy (mixup / cutmix / label-smoothing targets): the batch mean."""
    return soft_cross_entropy(target, logits).mean()


def _build(ecfg, pcfg, ckpt, num_classes):
    from jhssl.checkpoint import load_state_dict_strict
    from jhssl.methods.selfdistill import build_base_model
    backbone = build_base_model(pcfg, drop_path_rate=ecfg.drop_path)
    state = {k[len("backbone."):]: v for k, v in ckpt[ecfg.which].items() if str(k).startswith("backbone.")}
    load_state_dict_strict(backbone, state, strict=True, what=f"{ecfg.which}.backbone")
    model = FinetuneClassifier(backbone, num_classes, ecfg.pooling, ecfg.init_scale)
    for n, p in model.named_parameters():
        if n in model.unused_parameter_names():
            p.stop_grad()
    return model


def evaluate(model, val_ds):
    from jhssl.knn import extract_features
    was = model.is_training()
    model.eval()
    try:
        logits, labels = extract_features(lambda x: model(x), val_ds)
    finally:
        if was:
            model.train()
    return topk_accuracy(logits, labels)


def finetune(ecfg, pcfg, ckpt, checkpoint: str = "", max_iters=None, log=print, progress: bool = True) -> dict:
    """Fine-tune ``ckpt``'s base model with the tool config ``ecfg``; resumes from the newest
    ``checkpoint_*.pkl`` in ``ecfg.output_dir``. Writes ``finetune_results.json``, ``log.jsonl``,
    ``finetune_curves.png`` (and the label subset list)."""
    from jhssl.eval.augment import ClassifierTrainTransform, mixup_cutmix
    from jhssl.eval.common import build_sources, eval_dataset, image_size, train_dataset
    from jhssl.fileio import atomic_write_text
    from jhssl.logging import JsonlLogger
    from jhssl.optim import AdamW, clip_gradients
    from jhssl.schedules import cosine_scheduler
    from jhssl.train import _iteration_seed
    from jhssl.weights_io import load_checkpoint

    main = dist.is_main()
    os.makedirs(ecfg.output_dir, exist_ok=True)
    dist.check_batch_size(ecfg.batch_size)
    has_subset = ecfg.label_fraction < 1.0 or bool(ecfg.label_subset_file)
    subset_path = os.path.join(ecfg.output_dir, "label_subset.txt")
    train_src, val_src, classes = build_sources(pcfg, ecfg, subset_path if (has_subset and main) else None)
    if len(train_src) < ecfg.batch_size:
        raise ValueError(f"the train set has {len(train_src)} images, fewer than batch_size={ecfg.batch_size}")
    C = len(classes)
    size = image_size(pcfg, ecfg)
    tf = ClassifierTrainTransform(size, ecfg.train_scale, pcfg.data.mean, pcfg.data.std, ecfg.rand_augment,
                                  ecfg.reprob)
    train_ds = train_dataset(train_src, tf, pcfg, ecfg, drop_last=True)
    val_ds = eval_dataset(val_src, pcfg, ecfg)
    niter = len(train_ds)

    jt.set_global_seed(ecfg.seed)
    model = _build(ecfg, pcfg, ckpt, C)
    if dist.in_mpi():
        jt.sync([v for v in model.state_dict().values()])
        dist.broadcast_module(model)
    groups = layer_decay_param_groups(model, ecfg.layer_decay, ecfg.weight_decay)
    optimizer = AdamW(groups, lr=0.0, betas=tuple(ecfg.betas), weight_decay=ecfg.weight_decay)
    lr = ecfg.lr * ecfg.batch_size / ecfg.lr_ref_batch
    lr_sched = cosine_scheduler(lr, ecfg.min_lr, ecfg.epochs, niter, warmup_epochs=ecfg.warmup_epochs,
                                start_warmup_value=ecfg.warmup_lr)

    start_epoch, it, history = 0, 0, []
    path = dist.broadcast_object(ckpt_lib.latest_checkpoint(ecfg.output_dir) if main else None)
    if path:
        state = load_checkpoint(path)
        ckpt_lib.load_state_dict_strict(model, state["model"], what="fine-tuned model")
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, it, history = int(state["epoch"]), int(state["iteration"]), list(state.get("history", []))
        if main and log:
            log(f"resumed from {path}: epoch {start_epoch}, iteration {it}")
    stop_at = ecfg.epochs * niter if max_iters is None else min(ecfg.epochs * niter, it + int(max_iters))
    logger = JsonlLogger(os.path.join(ecfg.output_dir, "log.jsonl"), enabled=main)
    if main and log:
        log(f"fine-tuning {pcfg.model.arch}/{pcfg.model.patch_size} ({ecfg.which}) on {len(train_src)} images, "
            f"{C} classes, {niter} iterations/epoch x {ecfg.epochs} epochs, lr {lr:.2e} (batch {ecfg.batch_size}), "
            f"layer decay {ecfg.layer_decay}, drop path {ecfg.drop_path}")
    bar = None
    if progress and main:
        from tqdm import tqdm
        bar = tqdm(total=stop_at, initial=it, desc="finetune", dynamic_ncols=True)
    ckpt_path = path
    t0 = time.time()
    model.train()
    try:
        for epoch in range(start_epoch, ecfg.epochs):
            if it >= stop_at:
                break
            train_ds.set_epoch(epoch)
            losses = []
            for crops, _masks, labels in train_ds:
                if it >= stop_at:
                    break
                rng = np.random.default_rng([ecfg.seed, it, dist.rank(), 0x313])
                x, target, _ = mixup_cutmix(np.asarray(crops[0], np.float32), np.asarray(labels), C, rng,
                                            ecfg.mixup, ecfg.cutmix, ecfg.mixup_prob, ecfg.mixup_switch_prob,
                                            ecfg.label_smoothing)
                for g in optimizer.param_groups:
                    g["lr"] = float(lr_sched[it]) * g["lr_scale"]
                jt.set_seed(_iteration_seed(ecfg.seed, it))
                loss = soft_target_cross_entropy(model(jt.array(x)), jt.array(target))
                optimizer.backward(loss)
                if ecfg.clip_grad:
                    clip_gradients(optimizer, ecfg.clip_grad)
                optimizer.step()
                value = float(loss.item())
                if not np.isfinite(value):
                    raise FloatingPointError(f"non-finite fine-tuning loss at epoch {epoch}, iteration {it}; "
                                             f"the last good checkpoint is {ckpt_path or 'none'}")
                losses.append(value)
                it += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr_sched[it - 1]:.1e}", refresh=False)
            if it % niter or it // niter <= epoch:
                break  # stopped inside the epoch (max_iters): keep the last epoch-end checkpoint
            done = epoch + 1
            rec = {"type": "epoch", "epoch": done, "iteration": it, "loss": float(np.mean(losses)) if losses else None,
                   "lr": float(lr_sched[it - 1]), "time": time.time()}
            if done == ecfg.epochs or (ecfg.eval_every and done % ecfg.eval_every == 0):
                rec.update(evaluate(model, val_ds))
                if main and log:
                    log(f"epoch {done}/{ecfg.epochs}: loss {rec['loss']:.4f}, val top-1 {rec['top1']:.2f}% "
                        f"top-5 {rec['top5']:.2f}%")
            history.append(rec)
            logger.write(rec)
            ckpt_path = ckpt_lib.rolling_path(ecfg.output_dir, it)
            if main:
                state = {"model": ckpt_lib.to_numpy_state(model), "optimizer": optimizer.state_dict(),
                         "epoch": done, "iteration": it, "history": history,
                         "finetune_config": ecfg.to_dict(), "pretrain_config": pcfg.to_dict(),
                         "source_checkpoint": checkpoint}
                ckpt_lib.save_rolling(state, ecfg.output_dir, it, ecfg.keep_last)
            dist.barrier()
    finally:
        if bar is not None:
            bar.close()
    final = next((h for h in reversed(history) if "top1" in h), None)
    result = {"protocol": "fine-tuning (BEiT/iBOT: AdamW, layer-wise lr decay, mixup/cutmix, RandAugment)",
              "checkpoint": checkpoint, "which": ecfg.which, "pooling": model.pooling,
              "epochs_done": it // niter, "epochs": ecfg.epochs, "iteration": it,
              "train_images": int(len(train_src)), "num_classes": C, "label_fraction": ecfg.label_fraction,
              "label_seed": ecfg.label_seed, "label_subset_file": subset_path if has_subset else None,
              "top1": final["top1"] if final else None, "top5": final["top5"] if final else None,
              "history": history, "seconds": round(time.time() - t0, 1), "finetune_checkpoint": ckpt_path,
              "config": ecfg.to_dict()}
    if main:
        atomic_write_text(os.path.join(ecfg.output_dir, "finetune_results.json"), json.dumps(result, indent=1))
        _plot(history, os.path.join(ecfg.output_dir, "finetune_curves.png"))
    return result


def _plot(history, path):
    from jhssl.plots import plot_panels_png
    loss = {"train loss": [(h["epoch"], h["loss"]) for h in history if h.get("loss") is not None]}
    acc = {"val top-1": [(h["epoch"], h["top1"]) for h in history if "top1" in h]}
    if loss["train loss"] or acc["val top-1"]:
        plot_panels_png(path, [("fine-tuning loss", loss), ("val top-1 %", acc)], xlabel="epoch")
