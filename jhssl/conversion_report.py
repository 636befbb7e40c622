"""What a weight conversion did: :class:`ConversionReport` (loaded / missing / unexpected / dropped /
renamed / resized keys), printed by ``run/convert.py`` and ``run/export.py``."""
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

from .errors import StrictLoadError


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
