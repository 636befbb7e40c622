"""Performance switches: the models' kernel switch (:mod:`models.perf`, re-exported) and the
training-side ones.

* ``fast_kernels`` (:mod:`models.perf`): the custom CPU/GPU kernels; ``JHSSL_FAST_KERNELS=0``.
* ``masked_projection``: iBOT's masked-patch terms only see the masked tokens, so the student
  projects only those tokens and the teacher runs its prototype layer only on them plus one mean
  row for the center (``jhssl.methods.masked_rows``). Same loss and gradients; off, every patch
  token is projected. Environment ``JHSSL_MASKED_PROJECTION=0``.

In code: ``jhssl.perf.set_fast_kernels(False)`` / ``set_masked_projection(False)``, or temporarily
``with jhssl.perf.fast_kernels(False): ...`` / ``with jhssl.perf.masked_projection(False): ...``.
Environment variables are read once, at first use.
"""
from models.perf import _FAST_KERNELS, Switch, fast_kernels, fast_kernels_enabled, set_fast_kernels  # noqa: F401

_MASKED_PROJECTION = Switch("JHSSL_MASKED_PROJECTION")


def masked_projection_enabled() -> bool:
    """True when iBOT patch terms project only the masked tokens (see the module docstring)."""
    return _MASKED_PROJECTION.enabled()


def set_masked_projection(enabled: bool) -> None:
    """Turn the masked-token projection on or off for this process."""
    _MASKED_PROJECTION.set(enabled, "set_masked_projection")


def masked_projection(enabled: bool):
    """Context manager: run a block with the masked-token projection on or off."""
    return _MASKED_PROJECTION.scoped(enabled, "masked_projection")
