"""Pure Jittor modules: base models (ViT, Swin, ResNet, ResMLP, PVT-v2) and HSSL auxiliary heads.

The bottom layer: nothing here imports ``jhssl``. Importing the package is cheap (no jittor):
``models.env`` (Jittor's environment) runs first, and the model modules, which import jittor and
register their factories, load at the first use of a name below (``models.create_model`` ...).
"""
import importlib

from . import env  # noqa: F401  (sets Jittor's env before jittor is imported)
from .head_archs import HEAD_ARCHS  # noqa: F401

# Importing each module registers its factories with ``register_model``.
MODEL_MODULES = ("vit", "swin", "resnet", "resmlp", "pvt", "convnext", "heads")
_LAZY = {"create_model": "registry", "list_models": "registry", "register_model": "registry",
         "set_pretrained_loader": "registry",
         "AuxHead": "heads", "MultiAuxHead": "heads", "build_aux_head": "heads"}


def load_all() -> None:
    """Import every model module (registers all factories)."""
    for name in MODEL_MODULES:
        importlib.import_module(f"{__name__}.{name}")


def __getattr__(name):
    if name in _LAZY:
        load_all()
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in MODEL_MODULES or name in ("layers", "registry"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'models' has no attribute '{name}'")
