"""timm's state-dict key lists, shipped with the package (``jhssl/reference/timm/*.json``).

Export checks its output against them (every key and shape of timm's model of the same name with
``num_classes=0``), the zoo uses them as conversion targets, and the model tests compare our
keys and parameter counts with them. ``$JHSSL_TIMM_REFERENCE`` may point at another folder of
files of the same form (e.g. lists regenerated for a newer timm).
"""
import json
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "timm")


def reference_dir() -> str:
    """The folder of timm's reference key lists: ``$JHSSL_TIMM_REFERENCE`` or the packaged one."""
    override = os.environ.get("JHSSL_TIMM_REFERENCE")
    if override:
        if not os.path.isdir(override):
            raise FileNotFoundError(f"JHSSL_TIMM_REFERENCE={override!r} is not a directory")
        return os.path.abspath(override)
    return PACKAGE_DIR


def available() -> List[str]:
    """timm model names with a reference list."""
    return sorted(f[:-5] for f in os.listdir(reference_dir()) if f.endswith(".json"))


def timm_reference_name(arch: str, patch_size: Optional[int] = None, img_size: Optional[int] = None,
                        window_size: Optional[int] = None) -> str:
    """Our registry name (+ config) -> timm's model name, e.g. ('vit_small', 16) -> 'vit_small_patch16_224'."""
    if re.search(r"_patch\d+", arch):
        return arch
    size = img_size or 224
    if re.fullmatch(r"vit_(tiny|small|base|large)", arch):
        return f"{arch}_patch{patch_size or 16}_{size}"
    if re.fullmatch(r"swin_(tiny|small|base|large)", arch):
        return f"{arch}_patch{patch_size or 4}_window{window_size or 7}_{size}"
    return arch


def load_reference(timm_name: str) -> Optional[dict]:
    """The whole reference record of ``timm_name`` (model, timm_version, num_parameters, state_dict), or None."""
    path = os.path.join(reference_dir(), timm_name + ".json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def timm_reference(timm_name: str) -> Optional[Dict[str, tuple]]:
    """{key: shape} of timm's ``timm_name`` with num_classes=0, or None when no list is shipped for it."""
    data = load_reference(timm_name)
    if data is None:
        return None
    return OrderedDict((e["key"], tuple(e["shape"])) for e in data["state_dict"])
