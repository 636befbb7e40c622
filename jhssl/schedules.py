"""Per-iteration schedules (learning rate, weight decay, teacher momentum, teacher temperature)."""
import math

import numpy as np


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                     start_warmup_value=0.0, warmup_iters=None):
    """One value per training iteration: linear warm-up, then half a cosine from base to final.

    Same shape as DINO's schedule: ``len == epochs * niter_per_ep``; the first value after
    warm-up is ``base_value`` and the last is (almost exactly) ``final_value``.
    """
    if epochs <= 0 or niter_per_ep <= 0:
        raise ValueError(f"cosine_scheduler needs epochs > 0 and niter_per_ep > 0, got {epochs}, {niter_per_ep}")
    total = epochs * niter_per_ep
    n_warm = warmup_epochs * niter_per_ep if warmup_iters is None else warmup_iters
    n_warm = min(int(n_warm), total)
    warm = np.linspace(start_warmup_value, base_value, n_warm) if n_warm > 0 else np.zeros(0)
    n_cos = total - n_warm
    it = np.arange(n_cos)
    cos = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(math.pi * it / max(n_cos, 1)))
    if n_cos == 1:
        cos = np.array([base_value], dtype=np.float64)
    sched = np.concatenate([warm, cos])
    assert len(sched) == total
    return sched


def teacher_temp_schedule(warmup_temp, temp, warmup_epochs, epochs, start_epoch=0):
    """One value per epoch: constant ``warmup_temp`` until ``start_epoch`` (iBOT's MIM start),
    then linear from ``warmup_temp`` to ``temp`` over ``warmup_epochs``, then ``temp``."""
    start_epoch = min(start_epoch, epochs)
    warmup_epochs = max(0, min(warmup_epochs, epochs - start_epoch))
    parts = [np.full(start_epoch, warmup_temp, dtype=np.float64),
             np.linspace(warmup_temp, temp, warmup_epochs),
             np.full(epochs - start_epoch - warmup_epochs, temp, dtype=np.float64)]
    return np.concatenate(parts)
