"""Pure Jittor modules: base models (ViT, Swin, ResNet, ResMLP, PVT-v2) and HSSL auxiliary heads."""
from jhssl import bootstrap  # noqa: F401  (sets Jittor's env before jittor is imported)

from .registry import create_model, list_models, register_model  # noqa: F401

# Importing each module registers its factories with ``register_model``.
from . import vit, swin, resnet, resmlp, pvt, convnext  # noqa: F401,E402
from . import heads  # noqa: F401,E402
from .heads import HEAD_ARCHS, AuxHead, MultiAuxHead, build_aux_head  # noqa: F401,E402
