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

from jhssl.conversion_report import ConversionReport
from jhssl.errors import ArchMismatchError, StrictLoadError
from jhssl.fileio import atomic_output
from jhssl import weights_io

_ROLLING = re.compile(r"^checkpoint_(\d{8})\.pkl$")


def to_numpy_state(module):
    """``module.state_dict()`` as {name: ndarray} (a copy, independent of later updates)."""
    out = {}
    for k, v in module.state_dict().items():
        out[k] = v.numpy().copy() if isinstance(v, jt.Var) else np.array(v, copy=True)
    return out


def load_state_dict_strict(module, state, strict=True, what="model", optional=()):
    """Load ``state`` ({name: array}) into ``module``: the one strict state-dict loader.

    Everything is checked before anything is assigned: with ``strict`` a missing key (unless in
    ``optional``) or an unexpected one raises :class:`StrictLoadError` naming the first offender;
    any shape mismatch raises :class:`ArchMismatchError` with both shapes (Jittor's own
    ``load_state_dict`` only logs such problems). Values are assigned in place, cast to each
    Var's dtype, so Vars keep their identity (the optimizer and the EMA hold references) and
    their stop-grad flags. Returns a :class:`ConversionReport` (loaded / missing / unexpected).
    """
    own = module.state_dict()
    optional = set(optional)
    report = ConversionReport()
    report.missing = [k for k in own if k not in state and k not in optional]
    report.unexpected = [k for k in state if k not in own]
    if strict and report.missing:
        raise StrictLoadError(f"{what}: key '{report.missing[0]}' is missing from the checkpoint "
                              f"({len(report.missing)} missing in all)")
    if strict and report.unexpected:
        raise StrictLoadError(f"{what}: unexpected key '{report.unexpected[0]}' in the checkpoint "
                              f"({len(report.unexpected)} unexpected in all)")
    for k, v in state.items():
        if k in own and tuple(np.shape(v)) != tuple(own[k].shape):
            raise ArchMismatchError(f"{what}: shape mismatch for '{k}': checkpoint {tuple(np.shape(v))}, "
                                    f"model {tuple(own[k].shape)}")
    for k, var in own.items():
        if k in state:
            arr = state[k]
            arr = arr.numpy() if isinstance(arr, jt.Var) else np.asarray(arr)
            was_stop = var.is_stop_grad()
            # jt.array turns int64 into int32: cast back so e.g. BatchNorm counters keep their dtype
            var.update(jt.array(arr).cast(var.dtype))
            if was_stop:
                var.stop_grad()
    report.loaded = [k for k in own if k in state]
    return report


def rng_state():
    return {"numpy": np.random.get_state(), "python": random.getstate(), "jittor_seed": int(jt.get_seed())}


def set_rng_state(state):
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    jt.set_seed(int(state["jittor_seed"]))


def atomic_save(obj, path):
    """``jt.save``'s format to ``path`` atomically: a crash mid-write never leaves a truncated
    checkpoint. Streamed (:func:`jhssl.weights_io.save_jittor_pickle`): no in-memory copies of the file."""
    if path.endswith((".pth", ".pt", ".bin")):  # jt.save writes PyTorch's format there
        with atomic_output(path) as tmp:
            jt.save(obj, tmp)
        return
    weights_io.save_jittor_pickle(obj, path)


def load_checkpoint(path, trusted=False):
    """Read a training checkpoint through the allow-list loader (:func:`jhssl.weights_io.load_checkpoint`).

    jhssl's own checkpoints hold only numpy arrays, containers and numbers, so they load without
    ``trusted``; anything else pickled is refused unless ``trusted=True`` (``--trust-pickle``).
    """
    ckpt = weights_io.load_checkpoint(path, trusted=trusted)
    if not isinstance(ckpt, dict) or "student" not in ckpt:
        raise weights_io.CorruptFileError(f"{path} is not a jhssl training checkpoint (no 'student' entry)")
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
