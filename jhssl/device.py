"""``device: auto | cpu | cuda`` for every entry point, the same way.

The import-time half is ``jhssl.bootstrap`` (models/cuda_detect.py): it decides from the driver
and the toolkit whether Jittor is built with CUDA (``JHSSL_DEVICE`` forces it), and under mpirun
gives each rank its own GPU. :func:`use_device` is the run-time half, called with the config's
``device`` by run/train.py (through ``jhssl.train.setup_device``), run/eval_knn.py, run/analyze.py,
run/search.py and the benchmarks.
"""
from jhssl import bootstrap  # noqa: F401

import os

import jittor as jt

DEVICES = ("auto", "cpu", "cuda")


def use_device(want="auto") -> str:
    """Switch Jittor to ``want`` ('auto': CUDA when this process has it); returns 'cuda' or 'cpu'."""
    want = (want or "auto").lower()
    if want not in DEVICES:
        raise ValueError(f"device={want!r}: use one of {', '.join(DEVICES)}")
    if want == "cuda" and not jt.has_cuda:
        why = ("JHSSL_DEVICE=cpu is set" if os.environ.get("JHSSL_DEVICE", "").lower() == "cpu"
               else "no GPU driver or CUDA toolkit was found at startup (models/cuda_detect.py)")
        raise RuntimeError(f"device=cuda but Jittor has no CUDA here: {why}; use device=cpu")
    jt.flags.use_cuda = 1 if (want == "cuda" or (want == "auto" and jt.has_cuda)) else 0
    return "cuda" if jt.flags.use_cuda else "cpu"


def device_from_overrides(overrides, default="auto") -> str:
    """The ``device=...`` of dotted config overrides (the last one wins), else ``default``."""
    found = default
    for o in overrides or ():
        if isinstance(o, str) and o.startswith("device="):
            found = o.split("=", 1)[1].strip()
    return found
