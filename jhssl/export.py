"""Export the base model of a pretraining checkpoint for downstream use in PyTorch (timm, DINO, mmseg).

Only the base model is written: the auxiliary heads (``aux_head.*``), the projection heads
(``proj_*`` / ``head*``) and the iBOT mask token are dropped, so the result is exactly timm's model
of the same name with ``num_classes=0``.

Formats (``fmt``):

* ``timm``: ``{key: tensor}`` with timm's keys; ``timm.create_model(name, num_classes=0)
  .load_state_dict(sd)`` is strict-clean;
* ``dino``: ``{'teacher': {'backbone.' + key: tensor}}``, the layout of DINO/iBOT full checkpoints
  (their ``--pretrained_weights ... --checkpoint_key teacher`` loaders strip ``backbone.``);
* ``mmseg``: ``{'state_dict': {'backbone.' + key: tensor}}``.

Files: ``.pth`` is written with ``torch.save`` (needs torch); safetensors needs nothing and holds
no code (nested formats are flattened with '.', e.g. ``teacher.backbone.cls_token``). Every file is
written atomically. Reading a pickled checkpoint can run code: export only checkpoints you trust.
"""
import os
import re
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from . import convert, timm_reference, weights_io
from .resize import resize_pos_embed
from .errors import ArchMismatchError, StrictLoadError, TorchMissingError

FORMATS = ("timm", "dino", "mmseg")


def infer_arch(obj: Any) -> Tuple[Optional[str], Dict[str, Any]]:
    """(registry name, model kwargs) recorded in a checkpoint: our trainer's ``config.model`` or the
    authors' ``args`` (argparse.Namespace).

    The kwargs are the ones the model takes (:func:`models.registry.options_taken`): a config records
    ``patch_size``/``img_size`` for every base, but ResNet or PVT-v2 do not take them."""
    arch, kwargs = _recorded_arch(obj)
    if arch is None:
        return None, {}
    from models.registry import options_taken
    return arch, options_taken(arch, kwargs)


def _recorded_arch(obj: Any) -> Tuple[Optional[str], Dict[str, Any]]:
    if not isinstance(obj, Mapping):
        return None, {}
    cfg = obj.get("config")
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        m = cfg["model"]
        kwargs = {k: m[k] for k in ("patch_size", "img_size") if m.get(k) is not None}
        # As the trainer builds it: a null model.img_size means data.global_crop_size.
        data = cfg.get("data") if isinstance(cfg.get("data"), Mapping) else {}
        if "img_size" not in kwargs and data.get("global_crop_size"):
            kwargs["img_size"] = data["global_crop_size"]
        return m.get("arch"), kwargs
    args = obj.get("args")
    if args is not None and hasattr(args, "arch"):
        arch = str(getattr(args, "arch")).replace("deit", "vit")
        kwargs = {"patch_size": args.patch_size} if getattr(args, "patch_size", None) else {}
        return arch, kwargs
    return None, {}


def extract_base(obj: Any, which: str = "teacher",
                 report: Optional[convert.ConversionReport] = None) -> Dict[str, np.ndarray]:
    """The base model's ``{timm key: array}`` from a training checkpoint (ours or the authors'),
    a DINO/iBOT release, or a plain state dict."""
    report = report if report is not None else convert.ConversionReport()
    obj = weights_io.to_numpy_tree(obj)
    if isinstance(obj, Mapping) and obj.get("teacher", 0) is None and isinstance(obj.get("student"), Mapping):
        which = "student"  # a method without an EMA teacher (MAE): the student is the model
        report.source.append("no teacher in the checkpoint (MAE): exported the student")
    if isinstance(obj, Mapping) and which in obj and isinstance(obj[which], Mapping):
        sd = convert.unwrap(obj, which, report)
    elif isinstance(obj, Mapping) and any(w in obj for w in ("teacher", "student")):
        raise KeyError(f"checkpoint has no '{which}' state dict; it has: "
                       + ", ".join(k for k in ("teacher", "student") if k in obj))
    else:
        sd = convert.unwrap(obj, None, report)
    if convert.is_authors_format(sd):
        sd = convert.authors_to_ours(sd, report)
    sd = OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in sd.items())
    has_backbone = any(k.startswith("backbone.") for k in sd)
    out: Dict[str, np.ndarray] = OrderedDict()
    for k, v in sd.items():
        if has_backbone and not k.startswith("backbone."):
            report.dropped[k] = ("auxiliary head" if k.startswith("aux_head.") else
                                 "MAE decoder" if "decoder" in k or k == "aux_mask_token" else
                                 "MFF fusion" if k.startswith("fusion.") else "projection head")
            continue
        key = k[len("backbone."):] if has_backbone else k
        if key in ("mask_token", "masked_embed"):
            report.dropped[k] = "mask token"
            continue
        if not has_backbone and any(re.fullmatch(p, key) for p in convert.HEAD_PATTERNS):
            report.dropped[k] = "head"
            continue
        out[key] = to_torch_layout(key, v)
    if not out:
        raise ValueError("no base-model weights found in the checkpoint")
    return out


def to_torch_layout(key: str, value: np.ndarray) -> np.ndarray:
    """Jittor has no 0-d Vars: BatchNorm's ``num_batches_tracked`` is shape (1,) in our models and ()
    in PyTorch's (timm's ResNet); torch's strict ``load_state_dict`` rejects the other shape."""
    if key.endswith("num_batches_tracked") and value.shape == (1,):
        return value.reshape(())
    return value


def check_timm_keys(sd: Mapping[str, np.ndarray], timm_name: str, any_pos_embed_len: bool = False,
                    any_patch_size: bool = False) -> None:
    """Raise unless ``sd`` has exactly the keys and shapes of timm's ``timm_name`` (num_classes=0).

    ``any_pos_embed_len``: accept a ``pos_embed`` for another input size (same width), for models
    trained at another resolution (timm builds them with ``img_size=...``); ``any_patch_size``: also
    accept another patch size (``patch_embed.proj.weight``'s kernel; timm: ``patch_size=...``)."""
    ref = timm_reference.timm_reference(timm_name)
    if ref is None:
        raise FileNotFoundError(f"no timm reference key list for '{timm_name}' (shipped lists: "
                                f"{', '.join(timm_reference.available())})")
    missing = [k for k in ref if k not in sd]
    unexpected = [k for k in sd if k not in ref]
    if missing or unexpected:
        raise StrictLoadError(
            f"export does not match timm '{timm_name}': missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for k, shape in ref.items():
        got, shape = tuple(sd[k].shape), tuple(shape)
        if (any_pos_embed_len or any_patch_size) and k.endswith("pos_embed") and got[::2] == shape[::2]:
            continue
        if any_patch_size and k == "patch_embed.proj.weight" and got[:2] == shape[:2]:
            continue
        if got != shape:
            raise ArchMismatchError(f"export does not match timm '{timm_name}': first mismatching key "
                                    f"'{k}': exported shape {list(got)}, timm shape {list(shape)}")


def check_against_timm(sd: Mapping[str, np.ndarray], arch: Optional[str], kwargs: Mapping[str, Any]):
    """Check an export against the shipped timm key lists; returns ``(timm name or None, note)``.

    The exact model (patch and input size) when timm lists it; else its 224-px version (another
    input size: only ``pos_embed``'s length differs); else the family's default (another patch size
    too, e.g. a CPU demo's ViT-T/4 at 32 px against ``vit_tiny_patch16_224``). A model timm does not
    have at all (a custom width or depth) is not checked, and the note says so.
    """
    if not arch:
        return None, "the checkpoint records no architecture (pass --arch): keys not checked against timm"
    size, patch = kwargs.get("img_size"), kwargs.get("patch_size")
    exact = timm_reference.timm_reference_name(arch, patch, size)
    if timm_reference.timm_reference(exact) is not None:
        check_timm_keys(sd, exact)
        return exact, ""
    at224 = timm_reference.timm_reference_name(arch, patch, 224)
    pos_note = (f"build the timm model with img_size={size}, or export with --img-size 224" if "pos_embed" in sd
                else "")
    if timm_reference.timm_reference(at224) is not None:
        check_timm_keys(sd, at224, any_pos_embed_len=True)
        return at224, (f"pos_embed is for {size} px input: {pos_note}" if pos_note else "")
    family = timm_reference.timm_reference_name(arch, None, 224)
    if timm_reference.timm_reference(family) is not None:
        check_timm_keys(sd, family, any_pos_embed_len=True, any_patch_size=True)
        return family, (f"patch size {patch}, {size} px input: build the timm model with patch_size={patch}, "
                        f"img_size={size}")
    return None, f"timm has no model '{arch}' (no reference key list): keys not checked against timm"


def format_state_dict(sd: Mapping[str, np.ndarray], fmt: str) -> Dict[str, Any]:
    if fmt == "timm":
        return OrderedDict(sd)
    prefixed = OrderedDict(("backbone." + k, v) for k, v in sd.items())
    if fmt == "dino":
        return {"teacher": prefixed}
    if fmt == "mmseg":
        return {"state_dict": prefixed}
    raise ValueError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")


def resolve_output(out: str, safetensors: bool) -> str:
    """With ``--safetensors`` the file is safetensors: a ``.pth``/``.pt`` name gets the right suffix."""
    if safetensors and not out.lower().endswith(".safetensors"):
        root, ext = os.path.splitext(out)
        return (root if ext.lower() in (".pth", ".pt", ".bin", ".pkl") else out) + ".safetensors"
    return out


def export_checkpoint(checkpoint: str, out: str, which: str = "teacher", fmt: str = "timm",
                      safetensors: bool = False, arch: Optional[str] = None, img_size: Optional[int] = None,
                      trusted: bool = False) -> Dict[str, Any]:
    """Export the base model of ``checkpoint`` to ``out``; returns a summary dict.

    ``arch`` (registry or timm name) overrides the one recorded in the checkpoint; when timm has a
    reference key list for it, the export is checked against it (keys and shapes) before writing.
    ``img_size`` resamples a ViT ``pos_embed`` to that input size (bicubic), e.g. 224 for a model
    trained at another resolution.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if which not in ("teacher", "student"):
        raise ValueError(f"--which must be 'teacher' or 'student', got '{which}'")
    out = resolve_output(out, safetensors)
    kind = weights_io.output_kind(out)
    if kind == "torch" and not weights_io.torch_available():
        raise TorchMissingError.writing_pth(out, "pass --safetensors to write a .safetensors file instead (no "
                                                 "torch needed; load it in PyTorch with safetensors.torch.load_file)")
    if kind == "jittor":
        raise ValueError(f"export writes PyTorch files: use a .pth or .safetensors output path, not '{out}'")
    obj = weights_io.load_checkpoint(checkpoint, trusted=trusted)
    report = convert.ConversionReport()
    sd = extract_base(obj, which, report)
    rec_arch, kwargs = infer_arch(obj)
    arch = arch or rec_arch
    if img_size is not None and "pos_embed" in sd:
        patch = sd["patch_embed.proj.weight"].shape[-1]
        n = (img_size // patch) ** 2 + (1 if "cls_token" in sd else 0)
        if sd["pos_embed"].shape[1] != n:
            old = sd["pos_embed"].shape
            sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], n, 1 if "cls_token" in sd else 0)
            report.resized["pos_embed"] = (tuple(old), tuple(sd["pos_embed"].shape))
        kwargs["img_size"] = img_size
    timm_name, note = check_against_timm(sd, arch, kwargs)
    checked = timm_name is not None
    tree = format_state_dict(sd, fmt)
    weights_io.write_weights(tree, out, metadata={"format": fmt, "arch": str(arch), "which": which,
                                               "source": os.path.basename(checkpoint)})
    return {"out": out, "kind": kind, "format": fmt, "arch": arch, "timm_name": timm_name,
            "checked_against_timm": checked, "tensors": len(sd), "report": report, "note": note}
