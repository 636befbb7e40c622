"""Self-supervised methods: DINO / iBOT, optionally with HSSL's auxiliary head (``build_model(cfg)``)."""
from jhssl import bootstrap  # noqa: F401

from .losses import SelfDistillationLoss  # noqa: F401
from .network import SSLNetwork  # noqa: F401
from .projection import ProjectionMLP, WeightNormLinear  # noqa: F401
from .selfdistill import SelfDistillation, build_model, build_base_model  # noqa: F401
