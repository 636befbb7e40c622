"""Quick search for the auxiliary head (paper Section 3.5, Eqs. 6-8; zh extended version Fig. 5).

One training run with *all* candidate heads in parallel on the same base model:

* every candidate i has its own auxiliary head ``h^i`` (depth 1 by default) and its own projection
  heads; the base model's representation is passed through a *separate* projection per candidate,
  so the candidates do not interfere through a shared projection (zh Sec. 3.5: "the base model's
  representation z_{1/2}^b is fed to different projection heads when paired with different
  auxiliary heads");
* per candidate the HSSL loss of Eq. 6, ``L^{hi} = L(z1^{hi}, z2^b) + L(z1^{hi}, z2^{hi})`` (the
  same terms, centering and temperatures as a single-head HSSL run: one
  :class:`jhssl.methods.SelfDistillationLoss` per candidate, each with its own centers);
* the total loss is the mean over candidates (Eq. 7);
* after training, ``D_i = KL(z1^b || z1^{hi})`` (Eq. 8) from the teacher probabilities of the base
  (through the projection paired with head i) and of head i, averaged over held-out images; the
  recommended head is ``argmax_i D_i``.

The search model is a :mod:`jhssl.methods`-compatible method object (``student``, ``teacher``,
``loss``, ``compute_loss(crops, masks, epoch)``, ``ema_update``), so the trainer's step machinery
trains it unchanged.
"""
from jhssl import bootstrap  # noqa: F401

import copy
import json
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import jittor as jt
from jittor import nn

from jhssl.config import HEAD_ARCHS, ConfigError
from jhssl.methods.losses import SelfDistillationLoss
from jhssl.methods.selfdistill import SelfDistillation, build_model
from jhssl import metrics

__all__ = ["SearchNetwork", "SearchMethod", "build_search", "check_search_config", "candidate_config",
           "discrepancies", "rank_heads", "write_results", "run_search", "time_search_vs_single"]


# ----------------------------------------------------------------------------- config
def check_search_config(cfg) -> List[str]:
    """The candidate heads (``hssl.heads`` of a search config), validated before any compute."""
    if cfg.hssl is None:
        raise ConfigError("the search needs an 'hssl' section: hssl.heads lists the candidate heads")
    heads = list(cfg.hssl.heads)
    if not heads:
        raise ConfigError(f"hssl.heads is empty: list the candidate heads (known: {', '.join(HEAD_ARCHS)})")
    unknown = [h for h in heads if h not in HEAD_ARCHS]
    if unknown:
        raise ConfigError(f"unknown head '{unknown[0]}' in hssl.heads; known heads: {', '.join(HEAD_ARCHS)}")
    dup = sorted({h for h in heads if heads.count(h) > 1})
    if dup:
        raise ConfigError(f"hssl.heads lists {', '.join(dup)} more than once; each candidate must be unique")
    if not cfg.hssl.image_level:
        raise ConfigError("the search ranks heads by the image-level discrepancy (Eq. 8) and trains with "
                          "Eq. 6: hssl.image_level must be true")
    return heads


def candidate_config(cfg, head: str):
    """The single-head HSSL config of one candidate (same everything, ``hssl.heads=[head]``)."""
    c = copy.deepcopy(cfg)
    c.hssl.heads = [head]
    return c


# ----------------------------------------------------------------------------- network
class SearchNetwork(nn.Module):
    """One base model and ``n`` candidate branches.

    ``branches[i]`` is a single-head :class:`jhssl.methods.SSLNetwork` built for candidate i
    (its auxiliary head, the base projection paired with it, the head's projection and
    prototypes) whose own backbone is dropped: every branch consumes the *shared* backbone's
    features. State-dict keys: ``backbone.*`` and ``branches.<i>.{head,last_layer*,aux_head,
    aux_proj,aux_last_layer*}.*``.
    """

    def __init__(self, backbone, branches: Sequence, names: Sequence[str]):
        super().__init__()
        self.backbone = backbone
        for b in branches:
            b.backbone = None  # shared: the branch only keeps its heads and projections
        self.branches = nn.ModuleList(list(branches))
        self.names = list(names)

    def execute(self, crops, masks=None, n_global=None, want=("base_cls", "base_patch", "head_cls", "head_patch")):
        """Like ``SSLNetwork.execute`` but returns ``{candidate name: {key: Var}}``.

        The backbone runs once per group of equal-size crops; every branch projects those
        features (and runs its auxiliary head on them).
        """
        if not isinstance(crops, (list, tuple)):
            crops = [crops]
        n_global = len(crops) if n_global is None else int(n_global)
        want = set(want)
        need_head = bool(want & {"head_cls", "head_patch"})
        groups, start = [], 0
        for i in range(1, len(crops) + 1):
            if i == len(crops) or tuple(crops[i].shape[-2:]) != tuple(crops[start].shape[-2:]) or i == n_global:
                groups.append((start, i))
                start = i
        acc = [{k: [] for k in ("base_cls", "base_feat", "base_patch", "head_cls", "head_feat", "head_patch")}
               for _ in self.branches]
        for a, b in groups:
            x = jt.concat(list(crops[a:b]), dim=0) if b - a > 1 else crops[a]
            is_global = a < n_global
            mask = None
            if masks is not None and is_global:
                mask = jt.concat(list(masks[a:b]), dim=0) if b - a > 1 else masks[a]
            out = self.backbone.forward_features(x, mask=mask) if mask is not None \
                else self.backbone.forward_features(x)
            for br, ac in zip(self.branches, acc):
                if "base_feat" in want:
                    ac["base_feat"].append(out["cls"])
                if "base_cls" in want:
                    ac["base_cls"].append(br.project(out["cls"], "base", "cls"))
                if is_global and "base_patch" in want:
                    ac["base_patch"].append(br.project(out["patch"], "base", "patch"))
                if need_head or "head_feat" in want:
                    h = br.aux_head(out["head_input"], out["grid"])
                    if "head_feat" in want:
                        ac["head_feat"].append(h["cls"])
                    if "head_cls" in want:
                        ac["head_cls"].append(br.project(h["cls"], "head", "cls"))
                    if is_global and "head_patch" in want:
                        ac["head_patch"].append(br.project(h["patch"], "head", "patch"))
        return {name: {k: (jt.concat(v, dim=0) if len(v) > 1 else v[0]) for k, v in ac.items() if v}
                for name, ac in zip(self.names, acc)}


class _LossBank(nn.Module):
    """One :class:`SelfDistillationLoss` per candidate (own centers); keys ``losses.<i>.center*``."""

    def __init__(self, losses):
        super().__init__()
        self.losses = nn.ModuleList(list(losses))


class SearchMethod(SelfDistillation):
    """Student/teacher :class:`SearchNetwork` pair trained with Eq. 7 (mean of the per-head Eq. 6).

    Which outputs meet in candidate i's loss follows the single-head HSSL method exactly
    (``SelfDistillation``: CLS ``L(z1h, z2b) + L(z1h, z2h)``; patch terms per ``hssl.patch_level``),
    so a search with one candidate computes the same loss as an HSSL run with that head.
    """

    def __init__(self, cfg, student: SearchNetwork, teacher: SearchNetwork, losses: Sequence[SelfDistillationLoss]):
        self.bank = _LossBank(losses)
        super().__init__(cfg, student, teacher, self.bank)
        self.names = list(student.names)

    def loss_for(self, i: int) -> SelfDistillationLoss:
        return self.bank.losses[i]

    def compute_loss(self, crops, masks, epoch):
        if len(crops) != self.n_global + self.n_local:
            raise ValueError(f"expected {self.n_global} global + {self.n_local} local crops, got {len(crops)}")
        globals_ = list(crops[:self.n_global])
        want_t = {self.cls_target} | ({self.patch_target} if self.patch_target else set())
        with jt.no_grad():
            t = self.teacher(globals_, n_global=self.n_global, want=want_t)
        want_s = {c + "_cls" for c in self.cls_students} | {p + "_patch" for p in self.patch_students}
        use_masks = masks if (self.method == "ibot" and self.patch_target) else None
        s = self.student(list(crops), masks=use_masks, n_global=self.n_global, want=want_s)
        parts: Dict[str, jt.Var] = {}
        total = 0.0
        for i, name in enumerate(self.names):
            si, ti = s[name], t[name]
            out = self.loss_for(i)({n: si[n + "_cls"] for n in self.cls_students},
                                   {n: si[n + "_patch"] for n in self.patch_students},
                                   ti[self.cls_target], ti[self.patch_target] if self.patch_target else None,
                                   use_masks, epoch)
            parts["loss_" + name] = out["loss"]
            total = total + out["loss"]
        parts["loss"] = total / len(self.names)  # Eq. 7
        return parts


def build_search(cfg, heads: Optional[Sequence[str]] = None) -> SearchMethod:
    """The search method for ``cfg`` with candidates ``heads`` (default: ``cfg.hssl.heads``).

    Each branch is built by the methods package from the candidate's single-head config
    (``build_model(candidate_config(cfg, head))``), so projections, prototypes and loss settings
    are those of a normal HSSL run with that head; the first candidate's backbone becomes the
    shared one (student and teacher), the others' are discarded.
    """
    heads = list(heads) if heads is not None else check_search_config(cfg)
    singles = [build_model(candidate_config(cfg, h)) for h in heads]
    student = SearchNetwork(singles[0].student.backbone, [m.student for m in singles], heads)
    teacher = SearchNetwork(singles[0].teacher.backbone, [m.teacher for m in singles], heads)
    method = SearchMethod(cfg, student, teacher, [m.loss for m in singles])
    method.copy_student_to_teacher()
    return method


# ----------------------------------------------------------------------------- discrepancy
def final_teacher_temp(loss: SelfDistillationLoss) -> float:
    return float(loss.teacher_temps[-1])


def discrepancies(method: SearchMethod, batches, max_images: Optional[int] = None) -> Dict[str, float]:
    """D_i = KL(z1^b || z1^{hi}) (Eq. 8) per candidate, averaged over the images in ``batches``.

    ``batches`` yields image Vars/arrays (B, 3, H, W) (or (images, labels) pairs). Teacher
    probabilities are DINO's teacher distribution of candidate i:
    ``softmax((z - c_i) / T)`` with the candidate's loss center ``c_i`` and the final teacher
    temperature ``T``, applied to the teacher head's CLS logits and to the teacher base's CLS
    logits through the projection paired with head i. KL is computed in log space.
    """
    sums = {n: 0.0 for n in method.names}
    count = 0
    method.teacher.eval()
    for batch in batches:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not isinstance(x, jt.Var):
            x = jt.array(np.asarray(x, dtype=np.float32))
        if max_images is not None and count >= max_images:
            break
        if max_images is not None and count + x.shape[0] > max_images:
            x = x[:max_images - count]
        with jt.no_grad():
            t = method.teacher([x], n_global=1, want={"base_cls", "head_cls"})
        for i, name in enumerate(method.names):
            loss = method.loss_for(i)
            c = loss.center.numpy()
            per = metrics.kl_discrepancy_from_logits(t[name]["base_cls"].numpy(), t[name]["head_cls"].numpy(),
                                                     final_teacher_temp(loss), c, c, reduce=False)
            sums[name] += float(per.sum())
        count += int(x.shape[0])
        jt.sync_all()
        jt.gc()
    if count == 0:
        raise ValueError("no held-out images to measure the discrepancy on (empty evaluation set)")
    return {n: s / count for n, s in sums.items()}


def rank_heads(d: Dict[str, float]) -> List[Dict]:
    """Rows sorted by D (largest first): ``{'rank', 'head', 'D'}``. Non-finite D ranks last."""
    key = lambda kv: (-kv[1] if math.isfinite(kv[1]) else math.inf)
    return [{"rank": r + 1, "head": h, "D": v} for r, (h, v) in enumerate(sorted(d.items(), key=key))]


def recommended_line(ranking: List[Dict]) -> str:
    return f"hssl.heads=[{ranking[0]['head']}]"


def write_results(out_prefix: str, result: Dict) -> Dict[str, str]:
    """``<prefix>.json``, ``<prefix>.md`` and ``<prefix>.png`` (bar chart of D), atomically.
    (``run_search`` also writes the per-iteration losses to ``<prefix>_history.jsonl``.)"""
    ranking = result["ranking"]
    paths = {"json": out_prefix + ".json", "md": out_prefix + ".md", "png": out_prefix + ".png"}
    metrics.atomic_write_text(paths["json"], json.dumps(result, indent=2) + "\n")
    lines = [f"# Auxiliary-head search: {result.get('base', '')}", ""]
    if result.get("command"):
        lines += ["Command:", "", "```", result["command"], "```", ""]
    lines += ["| rank | head | D = KL(z1b ‖ z1h) |", "|---|---|---|"]
    lines += [f"| {r['rank']} | {r['head']} | {r['D']:.4g} |" for r in ranking]
    lines += ["", f"Recommended: `{result['recommended']}` (argmax D, paper Eq. 8)", ""]
    s = result.get("setup", {})
    if s:
        ep = s.get('epochs')
        lines += [f"Setup: {s.get('iterations')} iterations ({ep} epoch{'' if ep == 1 else 's'}) on "
                  f"{s.get('train_images')} images (data.subset={s.get('subset')}), "
                  f"batch {s.get('batch_size')}, head depth {s.get('depth')}; D over {s.get('eval_images')} "
                  f"held-out images.", ""]
    tm = result.get("timing")
    if tm:
        lines += [f"Timing on {s.get('device', '?')} (same step function, batch and machine; median of the timed "
                  f"iterations after {tm['warmup_iters']} warm-up ones, in which Jittor compiles):", "",
                  f"- search with {tm['n_heads']} heads: {tm['search_s_per_iter']:.3f} s/iter",
                  f"- single head ({tm['single_head']}): {tm['single_s_per_iter']:.3f} s/iter",
                  f"- ratio: {tm['ratio']:.2f}x (the paper reports 1.4x for six heads); the search's whole "
                  f"training took {result.get('train_wall_s', float('nan')):.1f} s, a single-head run of the "
                  f"same length ~{tm.get('single_run_estimate_s', float('nan')):.1f} s", ""]
    if result.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in result["notes"]] + [""]
    metrics.atomic_write_text(paths["md"], "\n".join(lines))
    best = 0
    metrics.plot_bars_png(paths["png"], [r["head"] for r in ranking], [r["D"] for r in ranking],
                          title=f"discrepancy D per auxiliary head ({result.get('base', '')})",
                          ylabel="D", highlight=best)
    return paths


# ----------------------------------------------------------------------------- training
class _Stepper:
    """The DINO/iBOT optimisation step for any jhssl.methods method object.

    AdamW on the student (no decay on biases and norms), lr = optim.lr * batch / lr_ref_batch
    with linear warm-up then cosine, weight decay on a cosine, per-parameter gradient clipping,
    frozen prototypes for the first ``optim.freeze_last_layer`` epochs, teacher EMA on a cosine
    from ``optim.momentum_teacher`` to 1. Built from :mod:`jhssl.optim` and :mod:`jhssl.schedules`.
    """

    def __init__(self, cfg, method, niter_per_epoch: int, epochs: int):
        from jhssl.optim import AdamW, clip_gradients, param_groups
        from jhssl.schedules import cosine_scheduler
        self.cfg, self.method = cfg, method
        o = cfg.optim
        if o.optimizer != "adamw":
            raise ConfigError(f"the search supports optim.optimizer=adamw only, got {o.optimizer!r}")
        self.niter = int(niter_per_epoch)
        lr = o.lr * cfg.batch_size / o.lr_ref_batch
        self.lr = cosine_scheduler(lr, o.min_lr, epochs, self.niter, warmup_epochs=min(o.warmup_epochs, epochs))
        self.wd = cosine_scheduler(o.weight_decay, o.weight_decay_end, epochs, self.niter)
        self.mom = cosine_scheduler(o.momentum_teacher, 1.0, epochs, self.niter)
        self.opt = AdamW(param_groups(method.student), lr=0.0)
        self._clip = clip_gradients
        self._last_layer = {id(p) for n, p in method.student.named_parameters() if "last_layer" in n}

    def step(self, crops, masks, it: int) -> Dict[str, float]:
        epoch = it // self.niter
        i = min(it, len(self.lr) - 1)
        for g in self.opt.param_groups:
            g["lr"] = float(self.lr[i])
            if g.get("regularized", True):
                g["weight_decay"] = float(self.wd[i])
        parts = self.method.compute_loss(crops, masks, epoch)
        loss = parts["loss"]
        self.opt.backward(loss)
        if self.cfg.optim.clip_grad > 0:
            self._clip(self.opt, self.cfg.optim.clip_grad)
        self.opt.frozen = self._last_layer if epoch < self.cfg.optim.freeze_last_layer else set()
        self.opt.step()
        self.method.ema_update(self.mom[i])
        vals = {k: float(v.item()) for k, v in parts.items()}
        if not math.isfinite(vals["loss"]):
            raise FloatingPointError(f"non-finite search loss {vals['loss']} at epoch {epoch}, iteration {it} "
                                     f"(per head: { {k: v for k, v in vals.items() if k != 'loss'} })")
        return vals


def _to_var(x):
    return x if isinstance(x, jt.Var) else jt.array(np.asarray(x))


def _batches(dataset, epoch: int):
    """(crops, masks) per batch of a :class:`jhssl.data.PretrainDataset` for ``epoch``."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    for batch in dataset:
        crops, masks = batch[0], batch[1]
        crops = [_to_var(c) for c in crops]
        masks = [_to_var(m) for m in masks] if masks is not None and len(masks) else None
        yield crops, masks


def train(cfg, method, dataset, max_iters: Optional[int] = None, log=print, progress: bool = True):
    """Train ``method`` for ``cfg.epochs`` epochs (or ``max_iters`` iterations) on ``dataset``.

    Returns ``(history, seconds_per_iteration list, wall seconds)``.
    """
    niter = dataset.total_len // cfg.batch_size
    if niter <= 0:
        raise ValueError(f"the search's training set has {dataset.total_len} images, fewer than "
                         f"batch_size={cfg.batch_size}: no full batch can be formed")
    total = cfg.epochs * niter if max_iters is None else min(int(max_iters), cfg.epochs * niter)
    stepper = _Stepper(cfg, method, niter, cfg.epochs)
    history, times = [], []
    t_start = time.time()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="search", dynamic_ncols=True)
    it = 0
    for epoch in range(cfg.epochs):
        if it >= total:
            break
        for crops, masks in _batches(dataset, epoch):
            if it >= total:
                break
            t0 = time.time()
            vals = stepper.step(crops, masks, it)
            jt.sync_all()
            times.append(time.time() - t0)
            history.append({"it": it, "epoch": epoch, **vals})
            if bar is not None:
                bar.set_postfix(loss=f"{vals['loss']:.3f}", lr=f"{stepper.lr[min(it, len(stepper.lr) - 1)]:.1e}")
                bar.update(1)
            it += 1
            if it % 10 == 0:
                jt.gc()
    if bar is not None:
        bar.close()
    return history, times, time.time() - t_start


# ----------------------------------------------------------------------------- timing
def _fixed_batch(dataset):
    for crops, masks in _batches(dataset, 0):
        return crops, masks
    raise ValueError("the training set yields no batch")


def _time_steps(cfg, method, batch, n_iters: int, warmup: int) -> List[float]:
    stepper = _Stepper(cfg, method, niter_per_epoch=max(n_iters + warmup, 1), epochs=1)
    crops, masks = batch
    out = []
    for it in range(warmup + n_iters):
        t0 = time.time()
        stepper.step(crops, masks, it)
        jt.sync_all(True)
        if it >= warmup:
            out.append(time.time() - t0)
    jt.gc()
    return out


def time_search_vs_single(cfg, dataset, heads: Sequence[str], n_iters: int = 5, warmup: int = 2,
                          single_head: Optional[str] = None) -> Dict:
    """Seconds per training iteration: the search (all ``heads``) vs one HSSL head alone.

    Both run the same optimisation step (:class:`_Stepper`) on the same fixed batch, on this
    machine, after ``warmup`` iterations (Jittor compiles kernels on first use). The single-head
    model is the normal HSSL method (``jhssl.methods.build_model``) with ``single_head``
    (default: the first candidate) at the search's depth.
    """
    if n_iters <= 0:
        raise ValueError(f"timing needs n_iters > 0, got {n_iters}")
    single_head = single_head or heads[0]
    batch = _fixed_batch(dataset)
    single = build_model(candidate_config(cfg, single_head))
    t_single = _time_steps(cfg, single, batch, n_iters, warmup)
    del single
    jt.gc()
    search = build_search(cfg, heads)
    t_search = _time_steps(cfg, search, batch, n_iters, warmup)
    s, m = float(np.median(t_single)), float(np.median(t_search))
    return {"n_heads": len(heads), "single_head": single_head, "iters_timed": n_iters, "warmup_iters": warmup,
            "single_s_per_iter": s, "search_s_per_iter": m, "ratio": m / s,
            "single_times": t_single, "search_times": t_search}


# ----------------------------------------------------------------------------- the whole search
def run_search(cfg, out_prefix: Optional[str] = None, timing_iters: int = 5, max_iters: Optional[int] = None,
               command: str = "", log=print, progress: bool = True) -> Dict:
    """Train all candidates in parallel, measure D_i, rank, time, and write the results.

    ``out_prefix`` (default ``<output_dir>/search``) gets ``.json``, ``.md`` and ``.png``.
    Returns the result dict (also written as JSON).
    """
    from jhssl.data import build_eval_datasets, build_pretrain_dataset
    heads = check_search_config(cfg)
    if cfg.grad_accum != 1:
        raise ConfigError("the search does not support grad_accum != 1")
    out_prefix = out_prefix or os.path.join(cfg.output_dir, "search")
    from jhssl.train import setup_device
    device = setup_device(cfg)
    jt.set_global_seed(cfg.seed)
    np.random.seed(cfg.seed)
    # Data first: a missing path, an empty subset or a missing held-out set fails before any compute.
    train_ds = build_pretrain_dataset(cfg)
    if train_ds.total_len == 0:
        raise ValueError(f"data.subset={cfg.data.subset} leaves no training images")
    try:
        _, heldout = build_eval_datasets(cfg)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"the discrepancy D (Eq. 8) is measured on held-out images: {e}") from None
    if heldout.total_len == 0:
        raise ValueError("the held-out set for the discrepancy is empty (eval.val_subset too small?)")
    log(f"search on {device}: base {cfg.model.arch}/{cfg.model.patch_size}, {len(heads)} candidate heads "
        f"({', '.join(heads)}), depth {cfg.hssl.depth}; {train_ds.total_len} training images "
        f"(data.subset={cfg.data.subset}), {heldout.total_len} held-out images")

    method = build_search(cfg, heads)
    history, times, wall = train(cfg, method, train_ds, max_iters=max_iters, log=log, progress=progress)
    jt.gc()
    d = discrepancies(method, heldout)
    ranking = rank_heads(d)
    if not all(math.isfinite(r["D"]) for r in ranking):
        log("warning: non-finite discrepancy for " + ", ".join(r["head"] for r in ranking if not math.isfinite(r["D"])))
    result = {
        "base": f"{cfg.model.arch} (patch {cfg.model.patch_size})",
        "command": command,
        "heads": heads,
        "ranking": ranking,
        "recommended": recommended_line(ranking),
        "discrepancy": d,
        "train_wall_s": wall,
        "final_loss": history[-1] if history else None,
        "setup": {"iterations": len(history), "epochs": cfg.epochs, "train_images": train_ds.total_len,
                  "subset": cfg.data.subset, "batch_size": cfg.batch_size, "depth": cfg.hssl.depth,
                  "method": cfg.method, "eval_images": heldout.total_len,
                  "seed": cfg.seed, "device": device,
                  "teacher_temp_for_D": final_teacher_temp(method.loss_for(0))},
    }
    del method
    jt.gc()
    if timing_iters > 0:
        tm = time_search_vs_single(cfg, train_ds, heads, n_iters=timing_iters)
        tm["single_run_estimate_s"] = tm["single_s_per_iter"] * len(history)
        tm["search_run_estimate_s"] = tm["search_s_per_iter"] * len(history)
        result["timing"] = tm
    paths = write_results(out_prefix, result)
    metrics.atomic_write_text(out_prefix + "_history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    log("")
    log("| rank | head | D |")
    for r in ranking:
        log(f"| {r['rank']} | {r['head']} | {r['D']:.4g} |")
    if "timing" in result:
        tm = result["timing"]
        log(f"time per iteration: search ({tm['n_heads']} heads) {tm['search_s_per_iter']:.3f}s, single head "
            f"({tm['single_head']}) {tm['single_s_per_iter']:.3f}s -> {tm['ratio']:.2f}x (paper: 1.4x for six heads)")
    log(f"wrote {paths['json']}, {paths['md']}, {paths['png']}")
    log("recommended head (argmax D), ready config line:")
    log(f"  {result['recommended']}")
    return result
