"""The base model a config names, built with exactly the options that model declares.

``models.registry.model_info(arch)`` says which of the options training passes a model takes
(``img_size``, ``patch_size``, ``drop_path_rate``, ``use_mask_token``). One it does not take is a
:class:`jhssl.config.ConfigError` naming the option and the model, raised before anything is built:

* ``model.img_size`` set (not null) for a model without a fixed input size (ResNet, PVT-v2);
* ``model.patch_size`` changed from its default for a model without patches (ResNet, PVT-v2);
* ``method=ibot`` (masked image modelling needs ``use_mask_token``) for a model without a mask token.
"""
from jhssl.config import SCHEMA, ConfigError

_DEFAULT_PATCH_SIZE = SCHEMA["model"]["patch_size"].default


def _registry():
    import models  # importing the package registers every model family
    return models.registry


def _not_taken(option, arch, taken, why):
    allowed = ", ".join(sorted(taken)) or "none"
    return ConfigError(f"config: {why} but model '{arch}' does not take the option '{option}' "
                       f"(its options: {allowed})")


def base_model_kwargs(cfg, drop_path_rate=None, use_mask_token=None):
    """The keyword arguments ``create_model(cfg.model.arch, ...)`` gets, checked against its declaration."""
    m = cfg.model
    info = _registry().model_info(m.arch)
    taken = info.options
    if use_mask_token is None:
        from jhssl.methods.registry import method_spec
        use_mask_token = method_spec(cfg.method).mask_token
    wanted = {"drop_path_rate": m.drop_path_rate if drop_path_rate is None else drop_path_rate,
              "img_size": m.img_size or cfg.data.global_crop_size,
              "patch_size": m.patch_size}
    if use_mask_token:
        wanted["use_mask_token"] = True
    if taken is None:  # an undeclared (e.g. test-registered) factory takes everything
        return wanted
    kwargs = {}
    for option, value in wanted.items():
        if option in taken:
            kwargs[option] = value
            continue
        if option == "img_size" and m.img_size is not None:
            raise _not_taken(option, m.arch, taken, f"model.img_size={m.img_size} is set")
        if option == "patch_size" and m.patch_size != _DEFAULT_PATCH_SIZE:
            raise _not_taken(option, m.arch, taken, f"model.patch_size={m.patch_size} is set")
        if option == "use_mask_token":
            raise _not_taken(option, m.arch, taken,
                             f"method={cfg.method} masks patches (masked image modelling)")
        if option == "drop_path_rate" and value:
            raise _not_taken(option, m.arch, taken, f"model.drop_path_rate={value} is set")
    return kwargs


def check_base_model(cfg):
    """Raise :class:`ConfigError` for an option ``cfg.model.arch`` does not take, or for global crops
    the iBOT mask grid does not divide (no model is built)."""
    base_model_kwargs(cfg)
    from jhssl.methods.registry import method_spec
    if method_spec(cfg.method).views.masks == "block":
        px = mask_patch_size(cfg)
        if cfg.data.global_crop_size % px:
            raise ConfigError(f"config key 'data.global_crop_size' = {cfg.data.global_crop_size} must be a "
                              f"multiple of {px}: the iBOT masks of '{cfg.model.arch}' are drawn on "
                              f"{px}-pixel cells (model.patch_size x {px // cfg.model.patch_size})")


def build_base_model(cfg, drop_path_rate=None, use_mask_token=None):
    """The base model named by ``cfg.model.arch`` with the options it takes."""
    kwargs = base_model_kwargs(cfg, drop_path_rate, use_mask_token)
    return _registry().create_model(cfg.model.arch, **kwargs)


def mask_patch_size(cfg) -> int:
    """Pixels per iBOT mask cell: ``model.patch_size`` times the model's ``mask_patch_multiple``
    (8 for Swin: masks follow its last stage, iBOT's Swin recipe and the authors' ``pred_size``)."""
    return cfg.model.patch_size * _registry().model_info(cfg.model.arch).mask_patch_multiple
