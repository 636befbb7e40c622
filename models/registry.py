"""timm-style model registry: ``create_model(name, **kwargs)``.

``pretrained=`` goes through a loader that a higher layer registers (``jhssl.zoo`` does, on
import, with :func:`set_pretrained_loader`): models/ never imports the zoo.
"""
from typing import Callable, Dict, List, Optional

_MODELS: Dict[str, Callable] = {}


class ModelError(ValueError):
    """A model cannot be built as asked (the caller's input is wrong, not the code)."""


class UnknownModelError(ModelError):
    """``create_model`` was given a name nobody registered."""


class ModelOptionError(ModelError):
    """``create_model`` was given an option the model does not take."""

_PRETRAINED_LOADER: Optional[Callable] = None


def register_model(fn: Callable) -> Callable:
    """Decorator: register a model factory under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model '{name}' is registered twice")
    _MODELS[name] = fn
    return fn


def set_pretrained_loader(fn: Optional[Callable]) -> None:
    """Register ``fn(model, pretrained, arch=name)``, which loads weights for ``create_model(pretrained=...)``."""
    global _PRETRAINED_LOADER
    _PRETRAINED_LOADER = fn


def _ensure_registered() -> None:
    import models
    models.load_all()


def list_models(pattern: str = "") -> List[str]:
    _ensure_registered()
    return sorted(n for n in _MODELS if pattern in n)


def create_model(name: str, pretrained=None, **kwargs):
    """Build a registered model; ``pretrained`` names a zoo entry or a local file (needs a registered loader)."""
    _ensure_registered()
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model '{name}'; known models: {', '.join(list_models())}")
    if pretrained and _PRETRAINED_LOADER is None:
        raise RuntimeError(
            f"create_model('{name}', pretrained={pretrained!r}): no pretrained-weight loader is registered; "
            "import jhssl.zoo first (it registers one) or call jhssl.zoo.create_pretrained(name, pretrained)")
    try:
        model = _MODELS[name](**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ModelOptionError(f"model '{name}' does not take the option given ({e}); options: "
                               f"{', '.join(sorted(kwargs))}") from e
    if pretrained:
        _PRETRAINED_LOADER(model, pretrained, arch=name)
    return model
