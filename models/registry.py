"""timm-style model registry: ``create_model(name, **kwargs)``."""
from typing import Callable, Dict, List

_MODELS: Dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Decorator: register a model factory under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model '{name}' is registered twice")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "") -> List[str]:
    return sorted(n for n in _MODELS if pattern in n)


def create_model(name: str, pretrained=None, **kwargs):
    """Build a registered model; ``pretrained`` names a zoo entry or a local file."""
    if name not in _MODELS:
        raise ValueError(f"unknown model '{name}'; known models: {', '.join(list_models())}")
    model = _MODELS[name](**kwargs)
    if pretrained:
        from jhssl import zoo  # imported lazily: models/ stays free of training code
        zoo.load_into(model, pretrained, arch=name)
    return model
