"""iBOT (Zhou et al., 2022) with or without HSSL: DINO's CLS self-distillation plus masked patch tokens.

Declared in :mod:`jhssl.methods.registry`: two global views with iBOT's blockwise masks (``mask.*``),
local crops, a mask token in the base model, an EMA teacher. Loss parts: ``cls_base``,
``patch_base`` (and ``cls_head``, ``patch_head`` with HSSL, per ``hssl.patch_level``). Per-epoch
discrepancy: D = KL(z1b || z1h) on the CLS prototypes (Eq. 5). Checkpoint: student, teacher, the
CLS and patch centers (rank 0's at start; batch means all-reduced every step).
"""
from jhssl import bootstrap  # noqa: F401

from .selfdistill import SelfDistillation, build_self_distillation


class IBOT(SelfDistillation):
    name = "ibot"


def build(cfg):
    return build_self_distillation(cfg, IBOT, use_patch=True)
