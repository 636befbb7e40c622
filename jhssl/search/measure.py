"""D_i = KL(z1^b || z1^{hi}) per candidate (Eq. 8) on held-out images, sharded over MPI ranks; the ranking."""
from jhssl import bootstrap  # noqa: F401

import math
from typing import Dict, List, Optional

import numpy as np

from jhssl import dist, metrics
from jhssl.methods.losses import SelfDistillationLoss

from .model import SearchMethod


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
