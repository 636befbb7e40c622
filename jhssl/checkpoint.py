"""Training checkpoints: atomic writes, rolling retention, RNG state, strict state-dict loading.

A checkpoint is a pickle (``jt.save`` / ``jt.load``, ``.pkl``) of a dict::

    {"student": {name: ndarray}, "teacher": {...}, "optimizer": {...}, "loss": {"center": ..., ...},
     "epoch": int (epochs completed), "iteration": int (global optimisation iterations done),
     "config": plain dict, "rng": {"numpy": ..., "python": ..., "jittor_seed": int}, "metrics": {...}}

Rolling files are ``checkpoint_<iteration:08d>.pkl`` (the newest ``keep_last`` are kept); ``resume='auto'``
picks the highest iteration in the output directory.
"""
from jhssl import bootstrap  # noqa: F401

import glob
import os
import random
import re

import numpy as np
import jittor as jt

from jhssl.fileio import atomic_output

_ROLLING = re.compile(r"^checkpoint_(\d{8})\.pkl$")


def to_numpy_state(module):
    """``module.state_dict()`` as {name: ndarray} (a copy, independent of later updates)."""
    out = {}
    for k, v in module.state_dict().items():
        out[k] = v.numpy().copy() if isinstance(v, jt.Var) else np.array(v, copy=True)
    return out


def load_state_dict_strict(module, state, strict=True, what="model"):
    """Load ``state`` into ``module``; with ``strict`` any missing or unexpected key, or a shape
    mismatch, is an error naming the first offender (and both shapes). Jittor's own
    ``load_state_dict`` only logs such problems."""
    own = module.state_dict()
    if strict:
        missing = [k for k in own if k not in state]
        if missing:
            raise KeyError(f"{what}: key '{missing[0]}' is missing from the checkpoint "
                           f"({len(missing)} missing in all)")
        unexpected = [k for k in state if k not in own]
        if unexpected:
            raise KeyError(f"{what}: unexpected key '{unexpected[0]}' in the checkpoint "
                           f"({len(unexpected)} unexpected in all)")
    for k, v in state.items():
        if k not in own:
            continue
        shape = tuple(v.shape)
        if tuple(own[k].shape) != shape:
            raise ValueError(f"{what}: shape mismatch for '{k}': checkpoint {shape}, model {tuple(own[k].shape)}")
    # assign in place so Vars keep their identity (optimizer and EMA hold references) and
    # their stop-grad flags
    for k, var in own.items():
        if k in state:
            arr = state[k]
            arr = arr.numpy() if isinstance(arr, jt.Var) else np.asarray(arr)
            was_stop = var.is_stop_grad()
            # jt.array turns int64 into int32: cast back so e.g. BatchNorm counters keep their dtype
            var.update(jt.array(arr).cast(var.dtype))
            if was_stop:
                var.stop_grad()


def rng_state():
    return {"numpy": np.random.get_state(), "python": random.getstate(), "jittor_seed": int(jt.get_seed())}


def set_rng_state(state):
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    jt.set_seed(int(state["jittor_seed"]))


def atomic_save(obj, path):
    """``jt.save`` to ``path`` atomically: a crash mid-write never leaves a truncated checkpoint."""
    with atomic_output(path) as tmp:
        jt.save(obj, tmp)


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = jt.load(path)
    if not isinstance(ckpt, dict) or "student" not in ckpt:
        raise ValueError(f"{path} is not a jhssl training checkpoint (no 'student' entry)")
    return ckpt


def rolling_checkpoints(output_dir):
    """[(iteration, path)] of the rolling checkpoints in ``output_dir``, oldest first."""
    found = []
    for p in glob.glob(os.path.join(output_dir, "checkpoint_*.pkl")):
        m = _ROLLING.match(os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir):
    found = rolling_checkpoints(output_dir)
    return found[-1][1] if found else None


def rolling_path(output_dir, iteration):
    return os.path.join(output_dir, f"checkpoint_{int(iteration):08d}.pkl")


def save_rolling(obj, output_dir, iteration, keep_last):
    """Save ``checkpoint_<iteration>.pkl`` atomically, then delete all but the newest ``keep_last``."""
    path = rolling_path(output_dir, iteration)
    atomic_save(obj, path)
    for _, old in rolling_checkpoints(output_dir)[:-max(int(keep_last), 1)]:
        try:
            os.unlink(old)
        except FileNotFoundError:
            pass
    return path
