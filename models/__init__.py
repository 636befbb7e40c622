"""Pure Jittor modules: base models (ViT, Swin, ResNet, ResMLP, PVT-v2) and HSSL auxiliary heads."""
from jhssl import bootstrap  # noqa: F401  (sets Jittor's env before jittor is imported)

from .registry import create_model, list_models, register_model  # noqa: F401
