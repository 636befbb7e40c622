"""DINO (Caron et al., 2021) with or without HSSL: self-distillation of the CLS token over multi-crop views.

Declared in :mod:`jhssl.methods.registry`: two global views plus ``data.local_crops_number`` local
ones, no masks, an EMA teacher (``optim.momentum_teacher`` -> 1), the self-distillation config keys.
Loss parts: ``cls_base`` (and ``cls_head`` with HSSL). Per-epoch discrepancy: D = KL(z1b || z1h)
of the teacher's prototype distributions (paper Eq. 5). Checkpoint: student, teacher, and the
loss's CLS center (broadcast from rank 0 at start, its batch mean all-reduced every step).
"""
from jhssl import bootstrap  # noqa: F401

from .selfdistill import SelfDistillation, build_self_distillation


class DINO(SelfDistillation):
    name = "dino"


def build(cfg):
    return build_self_distillation(cfg, DINO, use_patch=False)
