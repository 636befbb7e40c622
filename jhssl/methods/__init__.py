"""Self-supervised methods: DINO / iBOT / MAE, optionally with HSSL's auxiliary head (``build_model(cfg)``)."""
from jhssl import bootstrap  # noqa: F401

from .losses import SelfDistillationLoss  # noqa: F401
from .network import SSLNetwork  # noqa: F401
from .projection import ProjectionMLP, WeightNormLinear  # noqa: F401
from .selfdistill import SelfDistillation, build_base_model  # noqa: F401
from .selfdistill import build_model as build_selfdistill
from .mae import MAE, build_mae  # noqa: F401


def build_model(cfg):
    """The method object of ``cfg.method`` (MAE: :func:`build_mae`; DINO/iBOT: self-distillation)."""
    if cfg.method == "mae":
        return build_mae(cfg)
    return build_selfdistill(cfg)
