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
* the shipped search recipes (``configs/search_*.yaml``) set ``hssl.patch_level: none``: Eq. 6 has
  image-level terms only, and iBOT's patch terms would need a patch projection per base/head pair
  (12 for six heads), which makes a step ~3.9x a one-head step instead of the paper's 1.4x
  (``benchmarks/run.py``). Any ``patch_level`` works;
* after training, ``D_i = KL(z1^b || z1^{hi})`` (Eq. 8) from the teacher probabilities of the base
  (through the projection paired with head i) and of head i, averaged over held-out images; the
  recommended head is ``argmax_i D_i``.

The search model is a :mod:`jhssl.methods`-compatible method object (``student``, ``teacher``,
``loss``, ``compute_loss(crops, masks, epoch)``, ``ema_update``), so it is trained by the normal
training loop, ``jhssl.train.train(cfg, method=search)``: same optimiser, schedules, clipping,
EMA, checkpoints (``resume``), logs and MPI data parallelism as a single-head run. Under mpirun
the held-out images for D are sharded over the ranks (rank r measures images r, r+W, ...) and the
per-head sums and the image count are totalled with ``jhssl.dist.all_reduce_np``.
"""
from jhssl import bootstrap  # noqa: F401

import copy
import json
import math
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import jittor as jt
from jittor import nn

from jhssl.config import HEAD_ARCHS, ConfigError
from jhssl.methods.losses import SelfDistillationLoss
from jhssl.methods.network import backbone_passes, new_outputs
from jhssl.methods.selfdistill import SelfDistillation, build_model
from jhssl import dist, metrics
from jhssl.fileio import atomic_write_text
from jhssl.logging import read_jsonl
from jhssl.methods.registry import method_spec

__all__ = ["SearchNetwork", "SearchMethod", "build_search", "check_search_config", "candidate_config",
           "shard_indices", "heldout_batches", "discrepancies", "rank_heads", "write_results", "run_search",
           "time_search_vs_single"]


# ----------------------------------------------------------------------------- config
def check_search_config(cfg) -> List[str]:
    """The candidate heads (``hssl.heads`` of a search config), validated before any compute."""
    why_not = method_spec(cfg.method).search
    if why_not:
        raise ConfigError(f"run/search.py does not support method={cfg.method}: {why_not}")
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

    def execute(self, crops, masks=None, n_global=None, want=("base_cls", "base_patch", "head_cls", "head_patch"),
                patch_rows=None):
        """Like ``SSLNetwork.execute`` but returns ``{candidate name: {key: Var}}``.

        The backbone runs once per group of equal-size crops; every branch projects those
        features (and runs its auxiliary head on them).
        """
        want = set(want)
        acc = [new_outputs() for _ in self.branches]
        for is_global, out in backbone_passes(self.backbone, crops, masks, n_global):
            for br, ac in zip(self.branches, acc):
                br.collect(out, is_global, want, ac)
        return {name: br.finish(ac, want, patch_rows) for name, br, ac in zip(self.names, self.branches, acc)}


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

    # jhssl.train's per-epoch base/head discrepancy log (Eq. 5, CKA, Procrustes) measures one head;
    # the search ranks its candidates with D_i (Eq. 8) after training instead
    per_epoch_discrepancy = False

    def __init__(self, cfg, student: SearchNetwork, teacher: SearchNetwork, losses: Sequence[SelfDistillationLoss]):
        self.bank = _LossBank(losses)
        super().__init__(cfg, student, teacher, self.bank, patch_terms=losses[0].use_patch)
        self.names = list(student.names)

    def loss_for(self, i: int) -> SelfDistillationLoss:
        return self.bank.losses[i]

    def compute_loss(self, crops, masks, epoch):
        t, s, patch_masks = self.forward_pair(crops, masks)
        parts: Dict[str, jt.Var] = {}
        total = 0.0
        for i, name in enumerate(self.names):
            out = self.loss_terms(self.loss_for(i), t[name], s[name], patch_masks, epoch)
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


def shard_indices(n: int, rank: Optional[int] = None, world: Optional[int] = None) -> range:
    """This rank's share of ``n`` held-out images: ``rank, rank + world, ...`` (default: the MPI
    rank and world size). Over all ranks every index is taken exactly once; Jittor's own loader
    would instead pad the last batch with images another rank also measures."""
    w = dist.world_size() if world is None else int(world)
    r = dist.rank() if rank is None else int(rank)
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"shard_indices: rank {r} is not in [0, {w})")
    return range(r, int(n), w)


def heldout_batches(dataset, indices, batch_size: int):
    """Images (B, 3, H, W) float32 of ``dataset[i]`` for ``i`` in ``indices``, ``batch_size`` at a time."""
    idx = list(indices)
    for s in range(0, len(idx), int(batch_size)):
        yield np.stack([np.asarray(dataset[i][0], dtype=np.float32) for i in idx[s:s + int(batch_size)]])


def discrepancies(method: SearchMethod, batches, max_images: Optional[int] = None) -> Dict[str, float]:
    """D_i = KL(z1^b || z1^{hi}) (Eq. 8) per candidate, averaged over the images in ``batches``.

    ``batches`` yields image Vars/arrays (B, 3, H, W) (or (images, labels) pairs). Teacher
    probabilities are DINO's teacher distribution of candidate i:
    ``softmax((z - c_i) / T)`` with the candidate's loss center ``c_i`` and the final teacher
    temperature ``T``, applied to the teacher head's CLS logits and to the teacher base's CLS
    logits through the projection paired with head i. KL is computed in log space.

    Collective under MPI: each rank passes its own shard of the images (``shard_indices``; at
    most ``max_images`` per rank) and the per-head sums and image counts are totalled over the
    ranks, so every rank returns the mean over all of them. Alone: the mean over ``batches``.
    """
    sums = np.zeros(len(method.names), dtype=np.float64)

    def measure(x):
        t = method.teacher([x], n_global=1, want={"base_cls", "head_cls"})
        for i, name in enumerate(method.names):
            loss = method.loss_for(i)
            c = loss.center.numpy()
            per = metrics.kl_discrepancy_from_logits(t[name]["base_cls"].numpy(), t[name]["head_cls"].numpy(),
                                                     final_teacher_temp(loss), c, c, reduce=False)
            sums[i] += float(per.sum())

    count = metrics.run_batches(method.teacher, batches, measure, max_images)
    total = dist.all_reduce_np(np.concatenate([sums, [count]]))
    sums, count = total[:-1], int(round(total[-1]))
    if count == 0:
        raise ValueError("no held-out images to measure the discrepancy on (empty evaluation set)")
    return {n: float(v) / count for n, v in zip(method.names, sums)}


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
    atomic_write_text(paths["json"], json.dumps(result, indent=2) + "\n")
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
        lines += [f"Timing on {s.get('device', '?')} (short runs of the same training loop, jhssl.train.train, on "
                  f"the same data, batch and machine; median seconds per iteration, data loading included, "
                  f"over {tm['iters_timed']} iterations after {tm['warmup_iters']} warm-up ones, in which "
                  f"Jittor compiles):", "",
                  f"- search with {tm['n_heads']} heads: {tm['search_s_per_iter']:.3f} s/iter",
                  f"- single head ({tm['single_head']}): {tm['single_s_per_iter']:.3f} s/iter",
                  f"- ratio: {tm['ratio']:.2f}x (the paper reports 1.4x for six heads); the search's whole "
                  f"training took {result.get('train_wall_s', float('nan')):.1f} s (setup, compilation and "
                  f"checkpoints included), its iterations alone ~{tm.get('search_run_estimate_s', float('nan')):.1f} s "
                  f"and a single-head run's ~{tm.get('single_run_estimate_s', float('nan')):.1f} s", ""]
    if result.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in result["notes"]] + [""]
    atomic_write_text(paths["md"], "\n".join(lines))
    best = 0
    metrics.plot_bars_png(paths["png"], [r["head"] for r in ranking], [r["D"] for r in ranking],
                          title=f"discrepancy D per auxiliary head ({result.get('base', '')})",
                          ylabel="D", highlight=best)
    return paths


# ----------------------------------------------------------------------------- timing
def _steps(records) -> List[Dict]:
    return [r for r in records if r.get("type") == "step"]


def _timed_train(cfg, out_dir: str, n_iters: int, warmup: int, build=None) -> List[float]:
    """Seconds of each of ``n_iters`` iterations of :func:`jhssl.train.train` on ``cfg``'s data,
    after ``warmup`` iterations (Jittor compiles kernels on first use).

    The loop is the real one, logging every iteration (``log_freq=1``): one iteration's time is
    ``batch_size / img_per_s`` of its log record, i.e. loading the batch, forward, backward,
    clipping, AdamW, EMA and the per-iteration loss read-out; no evaluation, and checkpoints
    (written between log records) are not counted. ``out_dir`` is scratch, removed afterwards.
    ``build(cfg)`` makes the method (default: ``build_model``), from the timing run's config
    (its ``epochs`` may be raised so that enough iterations exist). Collective under MPI; every
    rank returns rank 0's times.
    """
    from jhssl.data import build_pretrain_dataset
    from jhssl.train import train
    c = copy.deepcopy(cfg)
    c.output_dir = out_dir
    c.log_freq, c.eval_every, c.save_every_iters, c.saveckp_freq, c.keep_last = 1, 0, 0, 0, 1
    need = warmup + n_iters
    niter = build_pretrain_dataset(c).total_len // c.batch_size
    c.epochs = max(int(c.epochs), -(-need // max(niter, 1)))  # enough epochs for the timed iterations
    if dist.is_main() and os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    try:
        train(c, resume=None, max_iters=need, log=lambda *a: None, progress=False,
              method=None if build is None else build(c), evaluate=False)
        times = None
        if dist.is_main():
            steps = sorted(_steps(read_jsonl(os.path.join(out_dir, "log.jsonl"))), key=lambda r: r["iteration"])
            times = [c.batch_size / r["img_per_s"] for r in steps][warmup:]
    finally:
        if dist.is_main():
            shutil.rmtree(out_dir, ignore_errors=True)
    times = dist.broadcast_object(times)
    if not times:
        raise RuntimeError(f"timing: no iteration after the {warmup} warm-up ones was logged")
    return times


def time_search_vs_single(cfg, heads: Sequence[str], n_iters: int = 5, warmup: int = 2,
                          single_head: Optional[str] = None) -> Dict:
    """Seconds per training iteration: the search (all ``heads``) vs one HSSL head alone.

    Both are short runs of the same training loop (:func:`jhssl.train.train`, see
    :func:`_timed_train`) on the same data, batch and machine; the single-head model is the
    normal HSSL method (``jhssl.methods.build_model``) with ``single_head`` (default: the first
    candidate) at the search's depth. Medians over the ``n_iters`` iterations after ``warmup``.
    """
    if n_iters <= 0:
        raise ValueError(f"timing needs n_iters > 0, got {n_iters}")
    single_head = single_head or heads[0]
    scratch = os.path.join(cfg.output_dir, "_search_timing")
    t_single = _timed_train(candidate_config(cfg, single_head), os.path.join(scratch, "single"), n_iters, warmup)
    jt.gc()
    t_search = _timed_train(cfg, os.path.join(scratch, "search"), n_iters, warmup,
                            build=lambda c: build_search(c, heads))
    jt.gc()
    if dist.is_main():
        shutil.rmtree(scratch, ignore_errors=True)
    s, m = float(np.median(t_single)), float(np.median(t_search))
    return {"n_heads": len(heads), "single_head": single_head, "iters_timed": n_iters, "warmup_iters": warmup,
            "single_s_per_iter": s, "search_s_per_iter": m, "ratio": m / s,
            "single_times": t_single, "search_times": t_search}


# ----------------------------------------------------------------------------- the whole search
def run_search(cfg, out_prefix: Optional[str] = None, timing_iters: int = 5, max_iters: Optional[int] = None,
               command: str = "", log=print, progress: bool = True, resume=None, knn: bool = False) -> Dict:
    """Train all candidates in parallel, measure D_i, rank, time, and write the results.

    Training is :func:`jhssl.train.train` with the :class:`SearchMethod` (checkpoints, ``log.jsonl``
    and loss curves in ``output_dir``; ``resume`` as there, default a fresh start; ``knn`` runs
    the trainer's k-NN of the shared base at the end). ``out_prefix`` (default
    ``<output_dir>/search``) gets ``.json``, ``.md``, ``.png`` and ``_history.jsonl`` (the logged
    losses). Under mpirun every rank runs this; rank 0 prints and writes. Returns the result dict
    (also written as JSON).
    """
    from jhssl.data import build_eval_datasets, build_pretrain_dataset
    from jhssl.train import setup_device, train
    heads = check_search_config(cfg)
    dist.check_batch_size(cfg.batch_size)  # the global batch must split evenly over the MPI ranks
    if knn and cfg.eval.features != "base":
        raise ConfigError(f"the search's k-NN evaluates the shared base only (eval.features=base), "
                          f"got eval.features={cfg.eval.features}: the candidates are several heads")
    main = dist.is_main()
    say = log if main else (lambda *a, **k: None)
    out_prefix = out_prefix or os.path.join(cfg.output_dir, "search")
    device = setup_device(cfg)
    jt.set_global_seed(cfg.seed)
    np.random.seed(cfg.seed)
    # Data first: a missing path, an empty subset or a missing held-out set fails before any compute.
    train_ds = build_pretrain_dataset(cfg)
    if train_ds.total_len == 0:
        raise ValueError(f"data.subset={cfg.data.subset} leaves no training images")
    if train_ds.total_len // cfg.batch_size == 0:
        raise ValueError(f"the search's training set has {train_ds.total_len} images, fewer than "
                         f"batch_size={cfg.batch_size}: no full batch can be formed")
    try:
        _, heldout = build_eval_datasets(cfg)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"the discrepancy D (Eq. 8) is measured on held-out images: {e}") from None
    if heldout.total_len == 0:
        raise ValueError("the held-out set for the discrepancy is empty (eval.val_subset too small?)")
    say(f"search on {device}: base {cfg.model.arch}/{cfg.model.patch_size}, {len(heads)} candidate heads "
        f"({', '.join(heads)}), depth {cfg.hssl.depth}; {train_ds.total_len} training images "
        f"(data.subset={cfg.data.subset}), {heldout.total_len} held-out images"
        + (f", {dist.world_size()} MPI ranks" if dist.world_size() > 1 else ""))

    method = build_search(cfg, heads)
    log_path = os.path.join(cfg.output_dir, "log.jsonl")
    n_before = len(read_jsonl(log_path)) if main else 0  # records of earlier runs in output_dir
    t0 = time.time()
    res = train(cfg, resume=resume, max_iters=max_iters, log=log, progress=progress, method=method, evaluate=knn)
    wall = time.time() - t0
    history = _steps(read_jsonl(log_path)[n_before:]) if main else []
    jt.gc()
    # each rank measures its own slice of the held-out images; the sums are totalled over ranks
    mine = shard_indices(heldout.total_len)
    d = discrepancies(method, heldout_batches(heldout, mine, cfg.eval.batch_size))
    ranking = rank_heads(d)
    if not all(math.isfinite(r["D"]) for r in ranking):
        say("warning: non-finite discrepancy for " + ", ".join(r["head"] for r in ranking if not math.isfinite(r["D"])))
    result = {
        "base": f"{cfg.model.arch} (patch {cfg.model.patch_size})",
        "command": command,
        "heads": heads,
        "ranking": ranking,
        "recommended": recommended_line(ranking),
        "discrepancy": d,
        "train_wall_s": wall,
        "final_loss": {"iteration": res["iteration"], **res["last_loss"]},
        "knn_shared_base": res["knn"],
        "checkpoint": res["checkpoint"],
        "setup": {"iterations": res["iteration"], "epochs": cfg.epochs, "train_images": train_ds.total_len,
                  "subset": cfg.data.subset, "batch_size": cfg.batch_size, "depth": cfg.hssl.depth,
                  "method": cfg.method, "eval_images": heldout.total_len,
                  "seed": cfg.seed, "device": device, "ranks": dist.world_size(),
                  "teacher_temp_for_D": final_teacher_temp(method.loss_for(0))},
    }
    del method
    jt.gc()
    if timing_iters > 0:
        tm = time_search_vs_single(cfg, heads, n_iters=timing_iters)
        tm["single_run_estimate_s"] = tm["single_s_per_iter"] * res["iteration"]
        tm["search_run_estimate_s"] = tm["search_s_per_iter"] * res["iteration"]
        result["timing"] = tm
    if not main:
        return result
    paths = write_results(out_prefix, result)
    atomic_write_text(out_prefix + "_history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
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
