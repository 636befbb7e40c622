"""timm-style model registry: ``create_model(name, **kwargs)``.

A factory may declare which build options it takes (``options``) and how its iBOT mask grid relates
to its patch size (``mask_patch_multiple``)::

    @register_model(options=("img_size", "patch_size", "drop_path_rate", "use_mask_token"))
    def vit_small(...): ...

Training code asks :func:`model_info` before building, so an option a model does not take is a clear
error naming the option and the model, not a ``TypeError`` from deep inside a constructor. A factory
registered without a declaration (``register_model(fn)``) is taken to accept every option.

``pretrained=`` goes through a loader that a higher layer registers (``jhssl.zoo`` does, on
import, with :func:`set_pretrained_loader`): models/ never imports the zoo.
"""
from typing import Callable, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Sequence

_MODELS: Dict[str, Callable] = {}
_INFO: Dict[str, "ModelInfo"] = {}
_PRETRAINED_LOADER: Optional[Callable] = None


class ModelError(ValueError):
    """A model cannot be built as asked (the caller's input is wrong, not the code)."""


class UnknownModelError(ModelError):
    """``create_model`` was given a name nobody registered."""


class ModelOptionError(ModelError):
    """``create_model`` was given an option the model does not take."""


class ModelInfo(NamedTuple):
    """What a registered base model takes.

    ``options``: build options it accepts among the ones training passes (None: any);
    ``mask_patch_multiple``: iBOT masks are drawn on a grid of ``patch_size * mask_patch_multiple``
    pixels (1 for ViT/ResMLP; 8 for a 4-stage Swin, whose masks follow its last stage as in iBOT's
    and the HSSL authors' code, and are repeated up to the patch-embedding grid by the model).
    """
    options: Optional[FrozenSet[str]]
    mask_patch_multiple: int = 1

    def takes(self, option: str) -> bool:
        """Whether the model's factory takes the build option ``option``."""
        return self.options is None or option in self.options


def register_model(fn: Optional[Callable] = None, *, options: Optional[Sequence[str]] = None,
                   mask_patch_multiple: int = 1):
    """Decorator: register a model factory under its function name (optionally declaring its options)."""
    def add(f: Callable) -> Callable:
        name = f.__name__
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = f
        _INFO[name] = ModelInfo(None if options is None else frozenset(options), int(mask_patch_multiple))
        return f
    return add(fn) if fn is not None else add


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


def _check_known(name: str) -> None:
    _ensure_registered()
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model '{name}'; known models: {', '.join(list_models())}")


def model_info(name: str) -> ModelInfo:
    """The declared options of a registered model (see :class:`ModelInfo`)."""
    _check_known(name)
    return _INFO[name]


def options_taken(name: str, kwargs: Mapping[str, object]) -> Dict[str, object]:
    """The part of ``kwargs`` (build options recorded elsewhere, e.g. a training config's
    ``patch_size``/``img_size``) that model ``name`` takes; all of it for an undeclared factory or
    a name nobody registered (nothing to ask)."""
    _ensure_registered()
    info = _INFO.get(name)
    if info is None:
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if info.takes(k)}


def create_model(name: str, pretrained=None, **kwargs):
    """Build a registered model; ``pretrained`` names a zoo entry or a local file (needs a registered loader)."""
    _check_known(name)
    if pretrained and _PRETRAINED_LOADER is None:
        raise RuntimeError(
            f"create_model('{name}', pretrained={pretrained!r}): no pretrained-weight loader is registered; "
            "import jhssl.zoo first (it registers one) or call jhssl.zoo.create_pretrained(name, pretrained)")
    try:
        model = _MODELS[name](**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        declared = _INFO[name].options
        raise ModelOptionError(f"model '{name}' does not take the option given ({e}); given: "
                               f"{', '.join(sorted(kwargs))}" + ("" if declared is None else
                               f"; its build options: {', '.join(sorted(declared)) or 'none'}")) from e
    if pretrained:
        _PRETRAINED_LOADER(model, pretrained, arch=name)
    return model
