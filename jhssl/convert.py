"""Convert weights between PyTorch releases (DINO, iBOT, MAE, timm, Swin) and our Jittor models.

Our base models use timm's state-dict keys and tensor layouts (``docs/interfaces.md``), and Jittor
stores Linear/Conv/LayerNorm weights in the same layout as PyTorch, so converting is a matter of
*names*: unwrapping the checkpoint, stripping wrapper prefixes, renaming the few keys that differ
between codebases, dropping parts that are not in the target (classifier/projection heads, MAE's
decoder, non-persistent buffers) and resizing position tables when the resolution differs.

Everything here works on ``{name: numpy array}`` dicts and needs neither torch nor jittor; the
functions that take a model only read its ``state_dict()``.

Entry points:

* :func:`convert_state_dict` -- any supported checkpoint object -> weights for a target key/shape set,
  with a :class:`ConversionReport` (loaded / missing / unexpected / dropped / resized keys);
* :func:`convert_file` -- the same for a file, writing the result (``run/convert.py``);
* :func:`authors_to_ours` -- a checkpoint of the authors' Jittor code (NK-JittorCV/Self-Supervised,
  ``main_hssl.py``) -> our ``backbone.* / aux_head.*`` naming;
* :func:`load_state_dict_checked` -- strict loading into a Jittor module.

Pickled checkpoints can run code when they are loaded: load only files you trust (see
:mod:`jhssl.weights_io`; untrusted globals are refused unless ``trusted=True``).
"""
import json
import os
import re
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import weights_io

REFERENCE_DIR_CANDIDATES = (
    os.environ.get("JHSSL_TIMM_REFERENCE", ""),
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "reference",
                 "timm-state-dicts"),
    "/work/shared/reference/timm-state-dicts",
)

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


class ArchMismatchError(ValueError):
    """The checkpoint holds another architecture (a tensor of the wrong shape)."""


class StrictLoadError(ValueError):
    """Missing or unexpected keys under strict loading."""


class ConversionReport:
    """What a conversion did; ``str()`` gives a human-readable summary."""

    def __init__(self):
        self.source: List[str] = []          # how the state dict was found ("['teacher']", "stripped 'backbone.'")
        self.loaded: List[str] = []
        self.missing: List[str] = []
        self.unexpected: List[str] = []
        self.dropped: Dict[str, str] = OrderedDict()   # key -> reason
        self.renamed: Dict[str, str] = OrderedDict()   # source key -> target key
        self.resized: Dict[str, Tuple[tuple, tuple]] = OrderedDict()

    @property
    def clean(self) -> bool:
        return not self.missing and not self.unexpected

    def check_strict(self, what: str = "checkpoint") -> None:
        if not self.clean:
            raise StrictLoadError(f"{what}: strict loading failed\n{self}")

    def __str__(self) -> str:
        lines = []
        if self.source:
            lines.append("source: " + ", ".join(self.source))
        lines.append(f"loaded: {len(self.loaded)} tensors")
        if self.renamed:
            lines.append(f"renamed: {len(self.renamed)} (e.g. " + ", ".join(
                f"{a} -> {b}" for a, b in list(self.renamed.items())[:3]) + ")")
        for k, (a, b) in self.resized.items():
            lines.append(f"resized: {k} {list(a)} -> {list(b)} (bicubic)")
        if self.dropped:
            reasons: Dict[str, List[str]] = OrderedDict()
            for k, r in self.dropped.items():
                reasons.setdefault(r, []).append(k)
            for r, keys in reasons.items():
                lines.append(f"dropped ({r}): {len(keys)}: " + _short_list(keys))
        lines.append(f"missing keys: {len(self.missing)}" + (": " + _short_list(self.missing) if self.missing else ""))
        lines.append(f"unexpected keys: {len(self.unexpected)}"
                     + (": " + _short_list(self.unexpected) if self.unexpected else ""))
        return "\n".join(lines)


def _short_list(keys: Sequence[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


# --------------------------------------------------------------------------------------------------
# bicubic resampling (same arithmetic as torch.nn.functional.interpolate(mode='bicubic',
# align_corners=False), which DINO/timm use for position embeddings and Swin bias tables)


def _cubic_weights(in_size: int, out_size: int) -> np.ndarray:
    A = -0.75  # torch's cubic convolution coefficient
    scale = in_size / out_size
    W = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        src = (i + 0.5) * scale - 0.5  # no clamping for cubic, as in torch
        x0 = int(np.floor(src))
        t = src - x0
        coeffs = (
            ((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A,
            ((A + 2) * t - (A + 3)) * t * t + 1,
            ((A + 2) * (1 - t) - (A + 3)) * (1 - t) * (1 - t) + 1,
            ((A * (2 - t) - 5 * A) * (2 - t) + 8 * A) * (2 - t) - 4 * A,
        )
        for k, c in enumerate(coeffs):
            idx = min(max(x0 - 1 + k, 0), in_size - 1)  # border replication
            W[i, idx] += c
    return W


def resize_bicubic(x: np.ndarray, out_hw: Tuple[int, int]) -> np.ndarray:
    """Resize (..., H, W) to (..., h, w) with torch's bicubic (align_corners=False) arithmetic."""
    H, W = x.shape[-2:]
    h, w = out_hw
    if (H, W) == (h, w):
        return x.copy()
    Wh, Ww = _cubic_weights(H, h), _cubic_weights(W, w)
    y = np.einsum("ih,...hw,jw->...ij", Wh, x.astype(np.float64), Ww)
    return y.astype(x.dtype)


def resize_pos_embed(pos: np.ndarray, new_len: int, num_prefix_tokens: int = 1,
                     new_grid: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Resize a (1, prefix + H*W, C) position embedding to (1, new_len, C) (square grids unless given)."""
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    n_old = grid.shape[1]
    s_old = int(round(np.sqrt(n_old)))
    if s_old * s_old != n_old:
        raise ArchMismatchError(f"pos_embed with {n_old} patch positions is not a square grid; cannot resize")
    n_new = new_len - num_prefix_tokens
    if new_grid is None:
        s_new = int(round(np.sqrt(n_new)))
        if s_new * s_new != n_new:
            raise ArchMismatchError(f"target pos_embed with {n_new} patch positions is not a square grid")
        new_grid = (s_new, s_new)
    C = pos.shape[-1]
    g = grid.reshape(s_old, s_old, C).transpose(2, 0, 1)       # (C, H, W)
    g = resize_bicubic(g, new_grid).transpose(1, 2, 0).reshape(1, -1, C)
    return np.concatenate([prefix, g], axis=1)


def resize_rel_pos_table(table: np.ndarray, new_len: int) -> np.ndarray:
    """Resize a Swin ((2W-1)^2, heads) relative-position bias table to (new_len, heads)."""
    L, heads = table.shape
    s_old, s_new = int(round(np.sqrt(L))), int(round(np.sqrt(new_len)))
    if s_old * s_old != L or s_new * s_new != new_len:
        raise ArchMismatchError(f"relative_position_bias_table lengths {L} -> {new_len} are not square")
    t = table.T.reshape(heads, s_old, s_old)
    return resize_bicubic(t, (s_new, s_new)).reshape(heads, new_len).T.copy()


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
# the authors' Jittor checkpoints


def is_authors_format(sd: Mapping[str, np.ndarray]) -> bool:
    """The authors' ViT keeps its ConvNext head inside the backbone (conv_blocks, norm2, masked_embed)."""
    return any(re.match(r"(module\.)?backbone\.(conv_blocks\.|norm2\.|masked_embed$)", k) for k in sd)


def authors_to_ours(sd: Mapping[str, np.ndarray], report: Optional[ConversionReport] = None) -> Dict[str, np.ndarray]:
    """Rename a teacher/student state dict of NK-JittorCV/Self-Supervised ``main_hssl.py`` to ours.

    * ``backbone.conv_blocks.N.{dwconv,norm,pwconv1,pwconv2}.*`` -> ``aux_head.blocks.N.*``
      (our ConvNext head block has the same sub-module names and layouts: a (C,1,k,k) depthwise conv,
      a LayerNorm and two Linear layers; the authors' first block has no shortcut, like ours);
    * ``backbone.norm2.*`` (LayerNorm over the head's tokens) -> ``aux_head.norm.*``;
    * ``backbone.masked_embed`` (1, C) -> ``backbone.mask_token`` (1, 1, C);
    * ``backbone.<timm key>`` stays;
    * the projection heads (their ``HSSLHead``) map onto :class:`jhssl.methods.network.SSLNetwork`:
      ``head.mlp.*`` (base projection, Linear-GELU-Linear-GELU-Linear: indices 0, 2, 4) stays,
      ``head.mlp2.*`` (head projection) -> ``aux_proj.mlp.*``, ``head.last_layer.weight_{g,v}``
      (weight-normed prototypes, g of shape (out, 1), normalised over the input dimension like ours)
      -> ``last_layer.*``; ``head.last_layer2.*`` is the same module (the authors require a shared
      head) and is dropped. Targets without projections (base + aux head) drop them as heads.
    """
    report = report if report is not None else ConversionReport()
    out: Dict[str, np.ndarray] = OrderedDict()
    for k, v in sd.items():
        key = k[len("module."):] if k.startswith("module.") else k
        new = key
        m = re.match(r"backbone\.conv_blocks\.(\d+)\.(.*)", key)
        if m:
            new = f"aux_head.blocks.{m.group(1)}.{m.group(2)}"
        elif key.startswith("backbone.norm2."):
            new = "aux_head.norm." + key[len("backbone.norm2."):]
        elif key == "backbone.masked_embed":
            new = "backbone.mask_token"
            v = v.reshape(1, 1, -1)
        elif key.startswith("head.mlp2."):
            new = "aux_proj.mlp." + key[len("head.mlp2."):]
        elif key.startswith("head.last_layer."):
            new = "last_layer." + key[len("head.last_layer."):]
        elif key.startswith("head.last_layer2."):
            report.dropped[k] = "shared with head.last_layer"
            continue
        if new != k:
            report.renamed[k] = new
        out[new] = v
    report.source.append("authors' HSSL layout (conv_blocks -> aux_head.blocks, norm2 -> aux_head.norm)")
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
# architectures and models


def timm_reference_name(arch: str, patch_size: Optional[int] = None, img_size: Optional[int] = None,
                        window_size: Optional[int] = None) -> str:
    """Our registry name (+ config) -> timm's model name, e.g. ('vit_small', 16) -> 'vit_small_patch16_224'."""
    if re.search(r"_patch\d+", arch):
        return arch
    size = img_size or 224
    m = re.fullmatch(r"vit_(tiny|small|base|large)", arch)
    if m:
        return f"{arch}_patch{patch_size or 16}_{size}"
    m = re.fullmatch(r"swin_(tiny|small|base|large)", arch)
    if m:
        return f"{arch}_patch{patch_size or 4}_window{window_size or 7}_{size}"
    return arch


def reference_dir() -> Optional[str]:
    """The folder of timm's reference key lists (``$JHSSL_TIMM_REFERENCE``, else ``../shared`` beside the repo)."""
    for d in REFERENCE_DIR_CANDIDATES:
        if d and os.path.isdir(d):
            return os.path.abspath(d)
    return None


def timm_reference(timm_name: str) -> Optional[Dict[str, tuple]]:
    """Keys and shapes of timm's ``timm_name`` with num_classes=0, from the stored reference lists."""
    d = reference_dir()
    if d is None:
        return None
    path = os.path.join(d, timm_name + ".json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return OrderedDict((e["key"], tuple(e["shape"])) for e in data["state_dict"])


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
    """Assign ``sd`` to ``module``'s parameters by name, checking keys and shapes.

    Jittor's own ``load_state_dict`` only logs problems; this raises :class:`StrictLoadError` on
    missing/unexpected keys (when ``strict``) and :class:`ArchMismatchError` on any shape mismatch,
    before anything is assigned.
    """
    report = ConversionReport()
    params = module.state_dict()
    optional = set(optional)
    for k, v in params.items():
        if k not in sd:
            if k not in optional:
                report.missing.append(k)
        elif tuple(np.shape(sd[k])) != tuple(v.shape):
            raise ArchMismatchError(f"first mismatching key '{k}': checkpoint shape {list(np.shape(sd[k]))}, "
                                    f"model shape {list(v.shape)}")
    report.unexpected = [k for k in sd if k not in params]
    if strict:
        report.check_strict(type(module).__name__)
    # Assign through the module's own loader so non-parameter Vars (buffers) are handled too.
    # Cast to each parameter's dtype: Var.update would otherwise adopt the checkpoint's dtype.
    module.load_state_dict({k: np.asarray(sd[k], order="C").astype(str(params[k].dtype)) for k in sd if k in params})
    report.loaded = [k for k in params if k in sd]
    return report


# --------------------------------------------------------------------------------------------------
# files


def output_kind(path: str) -> str:
    p = path.lower()
    if p.endswith(".safetensors"):
        return "safetensors"
    if p.endswith((".pth", ".pt", ".bin")):
        return "torch"
    return "jittor"  # .pkl and anything else: jt.save format


def write_weights(tree: Mapping[str, Any], path: str, metadata: Optional[Mapping[str, str]] = None) -> str:
    """Write weights by extension (.safetensors / .pth / else jt.save .pkl), atomically.

    safetensors cannot nest, so nested dicts are flattened with '.' (``teacher.backbone.x``), which
    :func:`unwrap` undoes.
    """
    kind = output_kind(path)
    if kind == "safetensors":
        from . import safetensors_io
        safetensors_io.save_file(weights_io.flat_arrays(tree), path, metadata=metadata)
    elif kind == "torch":
        weights_io.save_torch(tree, path)
    else:
        weights_io.save_jittor_pickle(tree, path)
    return kind


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
        raise weights_io.TorchMissingError(
            f"writing '{out}' as a PyTorch .pth file needs torch, which is not installed; "
            "use an output path ending in .safetensors (no torch needed) or .pkl (Jittor)")
    obj = weights_io.load_checkpoint(src, trusted=trusted)
    model_kwargs = dict(model_kwargs or {})
    if aux_head is not None:
        model_kwargs.setdefault("use_mask_token", True)
    _, _, target = build_target(arch, aux_head, aux_depth, **model_kwargs)
    optional = {k for k in target if k.endswith("mask_token")}
    sd, report = convert_state_dict(obj, target, which=which, optional=optional)
    if strict:
        report.check_strict(src)
    if out is not None:
        write_weights(sd, out, metadata={"arch": arch, "source": os.path.basename(src), "format": "timm"})
    return sd, report
