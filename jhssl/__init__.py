"""jhssl: Heterogeneous Self-Supervised Learning (HSSL, Li et al., TPAMI 2025) in Jittor."""
from . import bootstrap  # noqa: F401  (must run before jittor is imported)

__version__ = "0.1.0"
