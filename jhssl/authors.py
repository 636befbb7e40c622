"""Checkpoints of the authors' Jittor HSSL code (NK-JittorCV/Self-Supervised ``main_hssl.py``):
detection and renaming to our ``backbone.* / aux_head.*`` layout."""
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional

import numpy as np

from .conversion_report import ConversionReport


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
