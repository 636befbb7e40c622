"""The pretraining loop (DINO's ``main_dino.py`` structure): one readable epoch loop.

``train(cfg)`` builds data, student/teacher/loss (``jhssl.methods.build_model``), AdamW with
DINO's parameter groups and schedules, then per iteration:

    lr / weight decay from their schedules -> teacher forward (no grad) + student forward ->
    loss -> backward (/ grad_accum) -> [per-parameter clip, last layer frozen in early epochs,
    AdamW step, teacher EMA] every grad_accum iterations.

Checkpoints (jhssl.checkpoint) are written every epoch and optionally every N iterations;
``resume='auto'`` continues from the newest one in ``output_dir``. A k-NN evaluation of the
teacher's base CLS features runs every ``eval_every`` epochs and at the end.

``train(cfg, method=...)`` trains any prebuilt method object with this same loop (the head
search, ``jhssl.search``, passes its many-head ``SearchMethod``); the loss module's state (every
Var of ``method.loss.state_dict()``: one loss's centers or a bank of them) is checkpointed.
"""
from jhssl import bootstrap  # noqa: F401

import os
import time

import numpy as np
import jittor as jt

from jhssl import checkpoint as ckpt_lib
from jhssl import dist, monitors
from jhssl.amp import Precision
from jhssl.logging import JsonlLogger, plot_run
from jhssl.memory import release_free_memory
from jhssl.optim import AdamW, clip_gradients
from jhssl.schedules import cosine_scheduler


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stops and the last good checkpoint stays as it was."""


def setup_device(cfg):
    """``device``: auto (GPU when Jittor has CUDA), cpu, or cuda; ``amp`` only applies on GPU."""
    from jhssl.device import use_device
    device = use_device(cfg.device)
    # mixed precision is jhssl.amp's autocast (fp32 master weights), not Jittor's global amp level
    jt.flags.auto_mixed_precision_level = 0
    return device


def _iteration_seed(seed, iteration):
    # Jittor's random state cannot be read back, so it is re-seeded every iteration from
    # (seed, iteration): drop path draws are then identical in a resumed run.
    return (int(seed) * 1000003 + int(iteration) * 7919 + dist.rank() * 104729) % (2 ** 31 - 1)


def _loss_state(loss):
    """Every Var of the loss module (the centers of one loss, or ``losses.<i>.center*`` of the
    search's loss bank) as {name: ndarray}."""
    return ckpt_lib.to_numpy_state(loss)


def _checkpoint_state(method, optimizer, cfg, epoch, iteration, metrics):
    # a method without an EMA teacher (MAE) stores teacher None
    return {
        "student": ckpt_lib.to_numpy_state(method.student),
        "teacher": ckpt_lib.to_numpy_state(method.teacher) if method.teacher is not None else None,
        "optimizer": optimizer.state_dict(),
        "loss": _loss_state(method.loss),
        "epoch": int(epoch), "iteration": int(iteration),
        "config": cfg.to_dict(), "rng": ckpt_lib.rng_state(), "metrics": metrics,
    }


def _restore(method, optimizer, state):
    ckpt_lib.load_state_dict_strict(method.student, state["student"], what="student")
    if method.teacher is not None:
        ckpt_lib.load_state_dict_strict(method.teacher, state["teacher"], what="teacher")
    optimizer.load_state_dict(state["optimizer"])
    # older checkpoints stored "center_patch": None for a loss without patch terms
    loss_state = {k: v for k, v in state["loss"].items() if v is not None}
    ckpt_lib.load_state_dict_strict(method.loss, loss_state, what="loss")
    ckpt_lib.set_rng_state(state["rng"])


def _resolve_resume(cfg, resume):
    if resume is None or (isinstance(resume, str) and resume.lower() == "none"):
        return None
    if resume == "auto":
        return ckpt_lib.latest_checkpoint(cfg.output_dir)
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume checkpoint not found: {resume}")
    return resume


def _discrepancy(cfg, method, eval_sets, epoch, log):
    """Per-epoch base/head discrepancy (paper Eq. 5, CKA, Procrustes) on up to 500 k-NN val images."""
    from jhssl.metrics import DiscrepancyLog, network_discrepancy
    if not dist.is_main():
        # CKA/Procrustes do not split over shards, and Jittor's loader would hand each rank a
        # slice: rank 0 measures the same images a single process does (no collective inside)
        return None
    val = eval_sets[1]
    n, bs = min(500, val.total_len), 64
    images = (np.stack([val[i][0] for i in range(s, min(s + bs, n))]) for s in range(0, n, bs))
    stats = network_discrepancy(method, images, epoch=epoch, max_images=500)
    DiscrepancyLog(cfg.output_dir).add(epoch, stats)
    return stats


def run_knn(cfg, method, log=print, datasets=None):
    """k-NN top-1/top-5 of the teacher's features (``eval.features``: base CLS by default)."""
    from jhssl.knn import evaluate_knn, feature_fn
    net = method.eval_network(cfg.eval.which)
    was_training = net.is_training()
    net.eval()
    try:
        return evaluate_knn(cfg, feature_fn(net, cfg.eval.features), datasets=datasets, log=log)
    finally:
        if was_training:
            net.train()


def _no_phase(name):
    pass


def train(cfg, resume="auto", max_iters=None, log=print, progress=True, method=None, evaluate=True,
          trusted=False, profiler=None):
    """Pretrain according to ``cfg``. ``max_iters`` stops early (tests, timing).

    ``method``: a prebuilt method object (default ``build_model(cfg)``; the head search passes its
    ``SearchMethod``). ``evaluate=False`` skips the k-NN evaluations and the per-epoch base/head
    discrepancy log (the search's timing runs); the discrepancy log also needs a single-head
    network, so a method with ``per_epoch_discrepancy = False`` (the search) never writes it.

    ``profiler``: called as ``profiler(phase)`` where each phase of an iteration ends (``data``,
    ``forward``, ``backward``, ``clip``, ``optimizer``, ``ema``, ``logging``), after the untrained
    k-NN (``knn_untrained``), the final k-NN (``knn``), the per-epoch ``discrepancy`` and each
    checkpoint write (``checkpoint``), and before those (``setup``, ``before_*``);
    ``benchmarks/profile_step.py`` syncs Jittor there and reads clocks and memory. None: a no-op.

    Returns a dict: ``epoch``, ``iteration``, ``knn`` (``{k: {top1, top5}}`` of the last
    evaluation or None), ``last_loss`` (dict of the last logged loss parts), ``checkpoint``.
    """
    from jhssl.data import build_pretrain_dataset
    from jhssl.methods import build_model

    device = setup_device(cfg)
    phase = profiler if profiler is not None else _no_phase
    os.makedirs(cfg.output_dir, exist_ok=True)
    main = dist.is_main()
    jt.set_global_seed(cfg.seed)
    from jhssl.config import dump_yaml
    if main:
        dump_yaml(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    logger = JsonlLogger(os.path.join(cfg.output_dir, "log.jsonl"), enabled=main)

    # ---------------- data, model, optimizer, schedules
    dist.check_batch_size(cfg.batch_size)  # global batch: must split evenly over the MPI ranks
    if method is None:  # an option the base model does not take fails here, before any data is read
        from jhssl.base_models import check_base_model
        check_base_model(cfg)
    dataset = build_pretrain_dataset(cfg)
    from jhssl.data import build_eval_datasets
    # now, so a missing k-NN split fails before any training (not needed without evaluations)
    eval_sets = build_eval_datasets(cfg, ks=cfg.eval.knn_k) if evaluate else None  # also checks knn_k
    niter = len(dataset)
    if niter == 0:
        raise ValueError(f"the dataset gives no full batch of {cfg.batch_size} images")
    if method is None:
        method = build_model(cfg)
    student, teacher = method.student, method.teacher
    dist.sync_initial_state(method)  # jt.set_global_seed differs per rank: start from rank 0's state
    optimizer = AdamW(method.param_groups(), lr=0.0, betas=tuple(cfg.optim.betas))
    precision = Precision.from_config(cfg, device == "cuda")
    precision.attach(optimizer)
    accum = int(cfg.grad_accum)
    eff_batch = cfg.batch_size * accum
    o = cfg.optim
    lr_sched = cosine_scheduler(o.lr * eff_batch / o.lr_ref_batch, o.min_lr, cfg.epochs, niter,
                                warmup_epochs=o.warmup_epochs)
    wd_sched = cosine_scheduler(o.weight_decay, o.weight_decay_end, cfg.epochs, niter)
    mom_sched = method.momentum_schedule(niter)  # None: no EMA teacher

    # ---------------- resume
    start_epoch, start_iter, knn_result, ckpt_path = 0, 0, None, None
    # every rank resumes from the file rank 0 picks (output_dir must be on a shared file system)
    path = dist.broadcast_object(_resolve_resume(cfg, resume) if main else None)
    if path:
        state = ckpt_lib.load_checkpoint(path, trusted=trusted)  # allow-list unpickling unless trusted
        _restore(method, optimizer, state)
        start_iter = int(state["iteration"])
        start_epoch = start_iter // niter
        knn_result = state.get("metrics", {}).get("knn")
        ckpt_path = path
        if main:
            log(f"resumed from {path}: epoch {start_epoch}, iteration {start_iter}")
    n_params = sum(int(np.prod(p.shape)) for g in optimizer.param_groups for p in g["params"])
    if main:
        log(f"{cfg.method}{'+HSSL ' + '+'.join(cfg.hssl.heads) if cfg.hssl else ' baseline'}: "
            f"{cfg.model.arch}/{cfg.model.patch_size} on {device} ({precision.describe()}), "
            f"{n_params / 1e6:.2f}M trained parameters, "
            f"{len(dataset.loader.source)} images, {niter} iterations/epoch x {cfg.epochs} epochs, "
            f"lr {o.lr * eff_batch / o.lr_ref_batch:.2e} (batch {eff_batch})")
        if mom_sched is not None:
            kept = monitors.ema_initial_weight(mom_sched)
            log(f"teacher EMA: after {len(mom_sched)} iterations the teacher keeps {kept:.1%} of its initial "
                "weights" + (" (lower optim.momentum_teacher or train longer)" if kept > 0.05 else ""))

    knn_untrained = None
    if evaluate and start_iter == 0 and cfg.eval.knn_untrained:
        phase("setup")
        knn_untrained = _untrained_knn_and_log(cfg, method, logger, log, eval_sets)
        phase("knn_untrained")
    total_iters = cfg.epochs * niter
    stop_at = total_iters if max_iters is None else min(total_iters, start_iter + int(max_iters))
    it = start_iter
    last_parts = {}
    student.train()
    if teacher is not None:
        teacher.train()  # as DINO: batch statistics in the teacher's BatchNorms (see Method.__init__)
    # First iteration with a non-finite loss (-1: none); a lazy Var, read at log/checkpoint time.
    first_bad = jt.array(np.array([-1], dtype=np.int32)).stop_grad()
    iter_bar = None
    if progress and main:
        from tqdm import tqdm
        iter_bar = tqdm(total=stop_at, initial=start_iter, desc="train", dynamic_ncols=True)

    def check_finite():
        # collective under MPI: every rank stops together, at the earliest bad iteration of any rank
        bads = [int(b) for b in np.asarray(dist.all_gather_rows(first_bad.numpy()[None])).reshape(-1) if b >= 0]
        if bads:
            bad = min(bads)
            raise NonFiniteLossError(
                f"non-finite loss at epoch {bad // niter}, iteration {bad} (global; {bad % niter} in the "
                f"epoch): stopping. The last good checkpoint is untouched: {ckpt_path or 'none written yet'}")

    saved_at = [start_iter if path else -1]

    def save(epoch_done):
        # called by every rank at the same points (check_finite is collective); rank 0 writes
        nonlocal ckpt_path
        check_finite()
        saved_at[0] = it
        if not main:
            ckpt_path = ckpt_lib.rolling_path(cfg.output_dir, it)
            return
        phase("before_checkpoint")
        state = _checkpoint_state(method, optimizer, cfg, epoch_done, it, {"knn": knn_result})
        ckpt_path = ckpt_lib.save_rolling(state, cfg.output_dir, it, cfg.keep_last)
        if cfg.saveckp_freq and epoch_done and epoch_done % cfg.saveckp_freq == 0 and it % niter == 0:
            ckpt_lib.atomic_save(state, os.path.join(cfg.output_dir, f"checkpoint{epoch_done:04d}.pkl"))
        phase("checkpoint")

    try:
        for epoch in range(start_epoch, cfg.epochs):
            if it >= stop_at:
                break
            skip = it - epoch * niter  # mid-epoch resume: skip batches already trained on
            dataset.set_epoch(epoch, start_batch=skip)
            optimizer.frozen = method.frozen_parameters(epoch)
            t_log, n_img_log = time.time(), 0
            epoch_sums, epoch_count = {}, 0
            for i, (crops, masks, _labels) in enumerate(dataset, start=skip):
                if it >= stop_at:
                    break
                phase("data")
                if i % accum == 0 or it == start_iter:
                    for g in optimizer.param_groups:
                        g["lr"] = float(lr_sched[it])
                        g["weight_decay"] = float(wd_sched[it]) if g["regularized"] else 0.0
                jt.set_seed(_iteration_seed(cfg.seed, it))
                with precision.autocast():
                    parts = method.compute_loss(list(crops), list(masks) if masks else None, epoch)
                phase("forward")
                loss = parts["loss"]
                bad_now = jt.logical_not(jt.abs(loss.detach()) < 3.0e38).reshape((1,))  # NaN (compares False) or inf
                first_bad = jt.ternary(jt.logical_and(first_bad < 0, bad_now),
                                       jt.full((1,), it, "int32"), first_bad).stop_grad()
                optimizer.backward(loss / accum)
                phase("backward")
                if (i + 1) % accum == 0:
                    if o.clip_grad:
                        clip_gradients(optimizer, o.clip_grad)
                        phase("clip")
                    optimizer.step()
                    phase("optimizer")
                    if mom_sched is not None:
                        method.ema_update(mom_sched[it])
                        phase("ema")
                jt.sync_all()
                it += 1
                n_img_log += cfg.batch_size
                if iter_bar is not None:
                    iter_bar.update(1)
                if it % cfg.log_freq == 0 or it == stop_at or it % niter == 0:
                    check_finite()
                    # the loss of the global batch: mean of the ranks' (equal-sized) shard losses
                    last_parts = {k: float(dist.all_reduce_mean(v.detach()).item()) for k, v in parts.items()}
                    mon = {k: float(dist.all_reduce_mean(v).item())
                           for k, v in (getattr(method.loss, "monitors", None) or {}).items()}
                    ln_k = {"log_k": float(np.log(cfg.model.out_dim))} if mon else {}
                    dt = time.time() - t_log
                    rec = {"type": "step", "epoch": epoch, "iteration": it, **last_parts, **mon, **ln_k,
                           "lr": float(lr_sched[it - 1]), "wd": float(wd_sched[it - 1]),
                           "img_per_s": n_img_log / max(dt, 1e-9), "time": time.time()}
                    if mom_sched is not None:
                        rec["momentum"] = float(mom_sched[it - 1])
                    logger.write(rec)
                    for k, v in {**last_parts, **mon}.items():
                        epoch_sums[k] = epoch_sums.get(k, 0.0) + v
                    epoch_count += 1
                    if iter_bar is not None:
                        post = {k.replace("cls_", "c_").replace("patch_", "p_"): f"{v:.3f}" for k, v in last_parts.items()}
                        post.update({monitors.SHORT_NAMES[k]: f"{v:.2f}" for k, v in mon.items()})
                        post.update(lr=f"{rec['lr']:.1e}", ips=f"{rec['img_per_s']:.1f}")
                        iter_bar.set_postfix(post, refresh=False)
                    t_log, n_img_log = time.time(), 0
                if cfg.save_every_iters and it % cfg.save_every_iters == 0 and it % niter != 0:
                    save(epoch)
                # No jt.gc() here: Jittor's allocator keeps this step's blocks for the next, which needs
                # the same sizes. Freeing them every step (this loop did on the CPU until 2026-11-30) made
                # each step fault them in again, and the process grew: the demo's peak RSS was 1.50 GB
                # with it, 1.15 GB without (benchmarks/results/allocator_cache-*.md)
                phase("logging")
            # the epoch's steps are done: their cached blocks go back to the OS before the epoch-end
            # work (discrepancy, k-NN, checkpoint) and before data workers are forked again
            release_free_memory()
            epoch_done = it // niter
            if it % niter == 0 and epoch_done > epoch:  # a complete epoch
                if epoch_count and main:
                    means = {k: v / epoch_count for k, v in epoch_sums.items()}
                    logger.write({"type": "epoch", "epoch": epoch, "iteration": it, **means, "time": time.time()})
                    monitors.warn_if_collapsed(means, cfg.model.out_dim, epoch, cfg.epochs, logger)
                if evaluate and cfg.eval_every and epoch_done % cfg.eval_every == 0 and epoch_done < cfg.epochs:
                    knn_result = _knn_and_log(cfg, method, logger, epoch_done, it, log, eval_sets)
                if evaluate and cfg.hssl is not None and getattr(method, "per_epoch_discrepancy", True):
                    phase("before_discrepancy")
                    _discrepancy(cfg, method, eval_sets, epoch, log)
                    phase("discrepancy")
                save(epoch_done)
                if main:
                    plot_run(cfg.output_dir)
    finally:
        if iter_bar is not None:
            iter_bar.close()
        from jhssl.data.datasets import release_workers
        release_workers(dataset)  # they would load a next epoch through the k-NN, holding memory

    check_finite()
    finished = it >= total_iters
    if evaluate and finished and not (start_iter == total_iters and knn_result):
        phase("before_knn")
        knn_result = _knn_and_log(cfg, method, logger, it // niter, it, log, eval_sets)
        phase("knn")
        save(it // niter)
    elif saved_at[0] != it:  # stopped early (max_iters): keep the progress
        save(it // niter)
    if main:
        plot_run(cfg.output_dir)
    return {"epoch": it // niter, "iteration": it, "knn": knn_result, "last_loss": last_parts,
            "checkpoint": ckpt_path, "knn_untrained": knn_untrained}


def _untrained_knn_and_log(cfg, method, logger, log, eval_sets):
    """k-NN of the network before its first step (cached per weights + evaluation settings)."""
    from jhssl.untrained_knn import untrained_knn
    net = method.eval_network(cfg.eval.which)  # MAE has no teacher: the method decides
    res, cached = untrained_knn(cfg, net, lambda: run_knn(cfg, method, log=None, datasets=eval_sets))
    if dist.is_main():
        log(f"untrained network: k-NN top-1 {min(res.items())[1]['top1']:.2f}%{' (cached)' if cached else ''}")
        logger.write({"type": "knn_untrained", "epoch": 0, "iteration": 0, "time": time.time(),
                      **{f"top1_k{k}": r["top1"] for k, r in res.items()},
                      **{f"top5_k{k}": r["top5"] for k, r in res.items()}})
    return res


def _knn_and_log(cfg, method, logger, epoch, it, log, eval_sets=None):
    from jhssl.knn import format_knn
    res = run_knn(cfg, method, log=log if dist.is_main() else None, datasets=eval_sets)
    if dist.is_main():
        log(format_knn(res, cfg.eval.knn_t, what=f"{'teacher' if method.teacher is not None else 'student'} "
                                                   f"{cfg.eval.features}, epoch {epoch}"))
        logger.write({"type": "knn", "epoch": epoch, "iteration": it, "time": time.time(),
                      **{f"top1_k{k}": r["top1"] for k, r in res.items()},
                      **{f"top5_k{k}": r["top5"] for k, r in res.items()}})
        if hasattr(method, "write_reconstruction_png") and eval_sets is not None:  # MAE: input/masked/recon
            val = eval_sets[1]
            images = np.stack([val[i][0] for i in range(min(8, val.total_len))])
            method.write_reconstruction_png(os.path.join(cfg.output_dir, f"reconstruction_{epoch:04d}.png"),
                                            images, cfg.data.mean, cfg.data.std)
    return res
