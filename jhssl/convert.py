"""Convert weights between PyTorch releases (DINO, iBOT, MAE, timm, Swin) and our Jittor models.

Our base models use timm's state-dict keys and tensor layouts (``docs/interfaces.md``), and Jittor
stores Linear/Conv/LayerNorm weights in the same layout as PyTorch, so converting is a matter of
*names*: unwrapping the checkpoint, stripping wrapper prefixes, renaming the few keys that differ
between codebases, dropping parts that are not in the target (classifier/projection heads, MAE's
decoder, non-persistent buffers) and resizing position tables when the resolution differs.

This module finds a state dict inside a checkpoint and fits it to a target ({key: shape}); the
other jobs live beside it: :mod:`jhssl.conversion_report` (what a conversion did),
:mod:`jhssl.resize` (position tables at another resolution), :mod:`jhssl.authors` (the authors'
HSSL layout), :mod:`jhssl.timm_reference` (timm's key lists, shipped with the package),
:mod:`jhssl.weights_io` (reading and writing files) and :func:`jhssl.checkpoint.load_state_dict_strict`
(strict loading into a module). Their names stay importable from here.

Entry points:

* :func:`convert_state_dict` -- any supported checkpoint object -> weights for a target key/shape set,
  with a :class:`ConversionReport` (loaded / missing / unexpected / dropped / resized keys);
* :func:`convert_file` -- the same for a file, writing the result (``run/convert.py``).

Everything here works on ``{name: numpy array}`` dicts and needs neither torch nor jittor (only
:func:`build_target` builds models). Pickled checkpoints can run code when they are loaded: files
are read through the allow-list loader (:mod:`jhssl.weights_io`; ``trusted=True`` to bypass).
"""
import os
import re
from collections import OrderedDict
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from . import weights_io
from .authors import authors_to_ours, is_authors_format  # noqa: F401  (re-exported)
from .conversion_report import ConversionReport  # noqa: F401  (re-exported)
from .errors import ArchMismatchError, StrictLoadError, TorchMissingError  # noqa: F401  (re-exported)
from .resize import resize_bicubic, resize_pos_embed, resize_rel_pos_table  # noqa: F401  (re-exported)
from .timm_reference import reference_dir, timm_reference, timm_reference_name  # noqa: F401  (re-exported)
from .weights_io import output_kind, write_weights  # noqa: F401  (re-exported)

# Wrappers found in released checkpoints, in the order we unwrap them when no key is asked for:
# DINO/iBOT full checkpoints ('teacher', 'student'), MAE/DeiT ('model'), mmseg/iBOT backbones ('state_dict').
WRAPPER_KEYS = ("teacher", "student", "model", "state_dict", "model_state", "module", "net")
# Prefixes of wrapped modules: DDP ('module.'), MultiCropWrapper / mmseg ('backbone.'), MAE/HF ('encoder.').
STRIP_PREFIXES = ("module.", "backbone.", "encoder.")
# Keys that are not part of a base model; dropped (and reported) when the target does not have them.
# (Our SSLNetwork's projections are head.mlp / aux_proj.mlp / last_layer* / aux_last_layer*.)
HEAD_PATTERNS = (
    r"head\..*", r"head", r"fc_norm\..*", r"pre_logits\..*", r"last_layer.*", r"aux_last_layer.*",
    r"aux_head\..*", r"aux_proj\..*", r"proj_.*", r"head\d*\..*", r"decoder.*", r"conv_blocks\..*",
    r"norm2\..*",
)
# Non-persistent buffers that older Swin/ViT implementations saved; they are recomputed from the config.
BUFFER_PATTERNS = (r".*relative_position_index", r".*attn_mask", r".*relative_coords_table")


# --------------------------------------------------------------------------------------------------
# finding the state dict inside a checkpoint


def unwrap(obj: Any, which: Optional[str] = None, report: Optional[ConversionReport] = None) -> Dict[str, np.ndarray]:
    """Return the flat ``{key: array}`` state dict inside a checkpoint object.

    ``which`` picks a wrapper explicitly ('teacher' or 'student' for DINO/iBOT/HSSL checkpoints);
    otherwise the first of :data:`WRAPPER_KEYS` present is used (the teacher, as DINO/iBOT evaluate it).
    """
    report = report if report is not None else ConversionReport()
    obj = weights_io.to_numpy_tree(obj)
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint is a {type(obj).__name__}, not a dict of tensors")
    # Flattened nested checkpoints (safetensors cannot nest): 'teacher.backbone.x' -> unwrap by prefix.
    if not any(isinstance(v, Mapping) for v in obj.values()):
        tops = {k.split(".", 1)[0] for k in obj}
        wrappers = [w for w in WRAPPER_KEYS if w in tops]
        if wrappers and (which in tops or len(tops) <= len(wrappers)):
            pick = which if which in tops else wrappers[0]
            report.source.append(f"[{pick!r}]")
            return OrderedDict((k[len(pick) + 1:], v) for k, v in obj.items() if k.startswith(pick + "."))
        if which is not None:
            raise KeyError(f"checkpoint has no '{which}' entry (top-level names: {', '.join(sorted(tops)[:10])})")
        return OrderedDict((k, v) for k, v in obj.items() if isinstance(v, np.ndarray))
    if which is not None:
        if which not in obj:
            raise KeyError(f"checkpoint has no '{which}' entry; it has: {', '.join(map(str, obj))}")
        report.source.append(f"[{which!r}]")
        return unwrap(obj[which], None, report)
    for key in WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            report.source.append(f"[{key!r}]")
            return unwrap(obj[key], None, report)
    flat = weights_io.flat_arrays(obj)
    if not flat:
        raise ValueError("checkpoint contains no tensors (top-level keys: " + ", ".join(map(str, obj)) + ")")
    return OrderedDict(flat)


def strip_prefixes(sd: Mapping[str, np.ndarray], prefixes: Iterable[str] = STRIP_PREFIXES,
                   report: Optional[ConversionReport] = None) -> Dict[str, np.ndarray]:
    """Strip wrapper prefixes ('module.', 'backbone.', 'encoder.') from the start of every key."""
    out: Dict[str, np.ndarray] = OrderedDict()
    seen = set()
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k = k[len(p):]
                    seen.add(p)
                    changed = True
        out[k] = v
    if report is not None and seen:
        report.source.append("stripped " + ", ".join(repr(p) for p in prefixes if p in seen))
    return out


# --------------------------------------------------------------------------------------------------
# matching a state dict to a target


def _swin_old_to_new(sd: Dict[str, np.ndarray], report: ConversionReport) -> Dict[str, np.ndarray]:
    """Swin checkpoints of the original code (and iBOT) put PatchMerging at the *end* of stage i;
    timm >= 0.9 puts it at the *start* of stage i+1 with the same weights."""
    if not any(re.match(r"(.*\.)?layers\.0\.downsample\.", k) for k in sd):
        return sd
    out: Dict[str, np.ndarray] = OrderedDict()
    for k, v in sd.items():
        new = re.sub(r"(^|\.)layers\.(\d+)\.downsample\.",
                     lambda m: f"{m.group(1)}layers.{int(m.group(2)) + 1}.downsample.", k)
        if new != k:
            report.renamed[k] = new
        out[new] = v
    return out


def match_to_target(sd: Mapping[str, np.ndarray], target: Mapping[str, tuple],
                    report: Optional[ConversionReport] = None,
                    optional: Iterable[str] = ()) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Fit an already unwrapped/stripped state dict to ``target`` ({key: shape}).

    Renames known codebase differences, drops heads and buffers the target lacks, resizes
    ``pos_embed`` / Swin ``relative_position_bias_table`` by bicubic interpolation, and raises
    :class:`ArchMismatchError` at the first other shape mismatch (in the target's key order).
    ``optional`` target keys (e.g. a ``mask_token`` absent from public weights) are not reported missing.
    """
    report = report if report is not None else ConversionReport()
    target = OrderedDict((k, tuple(s)) for k, s in target.items())
    sd = _swin_old_to_new(OrderedDict(sd), report)
    has_decoder = any(k.startswith("decoder") for k in sd)
    out: Dict[str, np.ndarray] = OrderedDict()
    for k, v in sd.items():
        if k in target:
            out[k] = v
            continue
        # iBOT/HSSL-student 'masked_embed' (1, C) is our 'mask_token' (1, 1, C).
        base = k[: -len("masked_embed")] if k.endswith("masked_embed") else None
        if base is not None and base + "mask_token" in target:
            out[base + "mask_token"] = v.reshape(target[base + "mask_token"])
            report.renamed[k] = base + "mask_token"
            continue
        if any(re.fullmatch(p, k) for p in BUFFER_PATTERNS):
            report.dropped[k] = "buffer, recomputed"
            continue
        if has_decoder and (k == "mask_token" or k.endswith(".mask_token")):
            report.dropped[k] = "MAE decoder"
            continue
        if k.endswith("masked_embed") or k.endswith("mask_token"):
            report.dropped[k] = "mask token (not in target)"
            continue
        if any(re.fullmatch(p, k) for p in HEAD_PATTERNS):
            report.dropped[k] = "head (not in target)"
            continue
        report.unexpected.append(k)
    for k, shape in target.items():
        if k not in out:
            if k not in optional:
                report.missing.append(k)
            continue
        v = out[k]
        if tuple(v.shape) == shape:
            continue
        if k.endswith("pos_embed") and v.ndim == 3 and len(shape) == 3 and v.shape[2] == shape[2]:
            prefix = 1 if k[: -len("pos_embed")] + "cls_token" in target else 0
            out[k] = resize_pos_embed(v, shape[1], prefix)
            report.resized[k] = (tuple(v.shape), shape)
        elif k.endswith("relative_position_bias_table") and v.ndim == 2 and v.shape[1] == shape[1]:
            out[k] = resize_rel_pos_table(v, shape[0])
            report.resized[k] = (tuple(v.shape), shape)
        elif v.size == 1 and int(np.prod(shape)) == 1:
            # A scalar buffer (BatchNorm's num_batches_tracked): () in PyTorch, (1,) in Jittor.
            out[k] = v.reshape(shape)
        else:
            raise ArchMismatchError(
                f"checkpoint does not fit the target architecture: first mismatching key '{k}': "
                f"checkpoint shape {list(v.shape)}, model shape {list(shape)}")
    if target and not any(k in out for k in target):
        first_src = next(iter(sd), None)
        raise ArchMismatchError(
            f"checkpoint does not fit the target architecture: no key matches (first checkpoint key "
            f"'{first_src}', first model key '{next(iter(target))}'); is it another architecture?")
    report.loaded = [k for k in target if k in out]
    ordered = OrderedDict((k, out[k]) for k in target if k in out)
    return ordered, report


def convert_state_dict(obj: Any, target: Mapping[str, tuple], which: Optional[str] = None,
                       optional: Iterable[str] = ()) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Checkpoint object (any supported release) -> state dict for ``target`` ({key: shape}).

    ``target`` keys are either base-model keys (timm naming) or our composite keys
    (``backbone.*`` / ``aux_head.*``); in the first case every wrapper prefix is stripped.
    """
    report = ConversionReport()
    sd = unwrap(obj, which, report)
    composite = any(k.startswith(("backbone.", "aux_head.")) for k in target)
    if is_authors_format(sd):
        sd = authors_to_ours(sd, report)
    if composite:
        sd = strip_prefixes(sd, ("module.",), report)
        if not any(k.startswith("backbone.") for k in sd):
            # A base-only checkpoint loaded into a composite target: it holds the backbone.
            sd = OrderedDict(("backbone." + k, v) for k, v in strip_prefixes(sd, report=report).items())
    else:
        # When the base model sits under 'backbone.' (DINO/iBOT full checkpoints, our training
        # checkpoints), everything beside it (auxiliary head, projections) is not part of the base:
        # drop it before stripping, so e.g. 'aux_head.norm' cannot pose as the base's 'norm'.
        sd = strip_prefixes(sd, ("module.",))
        if any(k.startswith("backbone.") for k in sd):
            for k in list(sd):
                if not k.startswith("backbone."):
                    report.dropped[k] = ("auxiliary head" if k.startswith("aux_head.") else "head") + \
                        " (outside the backbone)"
                    del sd[k]
        sd = strip_prefixes(sd, report=report)
    return match_to_target(sd, target, report, optional)


# --------------------------------------------------------------------------------------------------
# targets and files


def model_shapes(model) -> Dict[str, tuple]:
    """{key: shape} of a Jittor module's state dict (numpy or jittor values)."""
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def build_target(arch: str, aux_head: Optional[str] = None, aux_depth: int = 3, **model_kwargs):
    """Build the model(s) a conversion targets; returns (base model, aux head or None, {key: shape})."""
    import models
    base = models.create_model(arch, **model_kwargs)
    if aux_head is None:
        return base, None, model_shapes(base)
    from models.heads import build_aux_head
    head = build_aux_head(aux_head, base.num_features, depth=aux_depth)
    target = OrderedDict(("backbone." + k, s) for k, s in model_shapes(base).items())
    target.update(("aux_head." + k, s) for k, s in model_shapes(head).items())
    return base, head, target


def load_state_dict_checked(module, sd: Mapping[str, np.ndarray], strict: bool = True,
                            optional: Iterable[str] = ()) -> ConversionReport:
    """Strict loading into a Jittor module: :func:`jhssl.checkpoint.load_state_dict_strict` (kept name)."""
    from .checkpoint import load_state_dict_strict
    return load_state_dict_strict(module, sd, strict=strict, what=type(module).__name__, optional=optional)


def convert_file(src: str, arch: str, out: Optional[str] = None, strict: bool = False, which: Optional[str] = None,
                 aux_head: Optional[str] = None, aux_depth: int = 3, trusted: bool = False,
                 model_kwargs: Optional[Mapping[str, Any]] = None) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Read ``src`` (any supported format), fit it to ``arch`` (plus an auxiliary head when ``aux_head``
    is given, e.g. for the authors' HSSL checkpoints), and write it to ``out`` when given.

    The output is written only after every check passed (and atomically), so a failed conversion
    never leaves a file behind.
    """
    if out is not None and output_kind(out) == "torch" and not weights_io.torch_available():
        # Fail before the (possibly long) conversion.
        raise TorchMissingError.writing_pth(out, "use an output path ending in .safetensors (no torch needed) "
                                                 "or .pkl (Jittor)")
    obj = weights_io.load_checkpoint(src, trusted=trusted)
    model_kwargs = dict(model_kwargs or {})
    if aux_head is not None and "use_mask_token" not in model_kwargs:
        # The authors' students carry a mask token; a base without one (ResNet, PVT-v2) is built without.
        from models.registry import options_taken
        model_kwargs.update(options_taken(arch, {"use_mask_token": True}))
    _, _, target = build_target(arch, aux_head, aux_depth, **model_kwargs)
    optional = {k for k in target if k.endswith("mask_token")}
    sd, report = convert_state_dict(obj, target, which=which, optional=optional)
    if strict:
        report.check_strict(src)
    if out is not None:
        write_weights(sd, out, metadata={"arch": arch, "source": os.path.basename(src), "format": "timm"})
    return sd, report
