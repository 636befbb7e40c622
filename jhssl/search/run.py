"""The whole search: train all candidates in parallel, measure D_i, rank, time, write the results."""
from jhssl import bootstrap  # noqa: F401

import json
import math
import os
import time
from typing import Dict, Optional

import numpy as np
import jittor as jt

from jhssl import dist
from jhssl.config import ConfigError
from jhssl.fileio import atomic_write_text
from jhssl.logging import read_jsonl

from .measure import discrepancies, final_teacher_temp, heldout_batches, rank_heads, recommended_line, shard_indices
from .model import build_search, check_search_config
from .report import write_results
from .timing import _steps, time_search_vs_single


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
