"""Self-supervised methods as plug-ins (DINO, iBOT, MoCo v3), each optionally with HSSL's auxiliary head.

``build_model(cfg)`` builds the method named by ``cfg.method``; :mod:`jhssl.methods.registry` holds
what each method declares (importable without jittor: the config parser reads it), and
:class:`jhssl.methods.base.Method` is the interface the trainer uses. The names below are loaded on
first use, so ``import jhssl.methods.registry`` stays free of jittor.
"""
import importlib

_EXPORTS = {
    "Method": ".base", "SelfDistillationLoss": ".losses", "SSLNetwork": ".network",
    "ProjectionMLP": ".projection", "WeightNormLinear": ".projection",
    "SPECS": ".registry", "build_method": ".registry", "method_names": ".registry", "method_spec": ".registry",
    "SelfDistillation": ".selfdistill", "build_model": ".selfdistill", "build_base_model": ".selfdistill",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jhssl.methods' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
