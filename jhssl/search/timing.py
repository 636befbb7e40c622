"""Timing harness: seconds per iteration of the search vs one HSSL head, from short runs of the real loop."""
from jhssl import bootstrap  # noqa: F401

import copy
import os
import shutil
from typing import Dict, List, Optional, Sequence

import numpy as np
import jittor as jt

from jhssl import dist
from jhssl.logging import read_jsonl

from .model import build_search, candidate_config


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
