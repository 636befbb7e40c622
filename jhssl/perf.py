"""Performance switches: the models' kernel switch (:mod:`models.perf`, re-exported) and the
training-side ones.

* ``fast_kernels`` (:mod:`models.perf`): the custom CPU/GPU kernels; ``JHSSL_FAST_KERNELS=0``.
* ``bf16_products`` (:mod:`models.perf`): linear and attention GEMMs with bf16 operands on the CPU;
  set by ``jhssl.amp`` for ``amp: true`` on a CPU with bf16 instructions, not by an environment variable.
* ``fused_bias`` (:mod:`models.perf`): the bias of the linear layer before GELU or the fused attention is
  added inside that kernel (no pass of its own, forward or backward). On by default; no environment variable.
* ``masked_projection``: iBOT's masked-patch terms only see the masked tokens, so the student
  projects only those tokens and the teacher runs its prototype layer only on them plus one mean
  row for the center (``jhssl.methods.masked_rows``). Same loss and gradients; off, every patch
  token is projected. Environment ``JHSSL_MASKED_PROJECTION=0``.
* ``uint8_transport``: the pretraining loader's workers send their crops as uint8 HWC arrays and
  the training process normalizes each batch to float32 CHW (``jhssl.data.transforms.normalize_uint8``,
  the same arithmetic as per image, so the same bits) just before it becomes a Jittor Var: a
  quarter of the bytes through the workers' ring buffers. Off, workers send float32 crops.
  Environment ``JHSSL_UINT8_TRANSPORT=0``. Read when a dataset is built.

In code: ``jhssl.perf.set_fast_kernels(False)`` / ``set_masked_projection(False)`` /
``set_uint8_transport(False)``, or temporarily ``with jhssl.perf.fast_kernels(False): ...`` (likewise
``masked_projection``, ``uint8_transport``).
Environment variables are read once, at first use.
"""
from models.perf import (_FAST_KERNELS, Switch, bf16_products, bf16_products_enabled, fast_kernels,  # noqa: F401
                         fast_kernels_enabled, fused_bias, fused_bias_enabled, set_fast_kernels)

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


_UINT8_TRANSPORT = Switch("JHSSL_UINT8_TRANSPORT")


def uint8_transport_enabled() -> bool:
    """True when pretraining loaders carry uint8 crops and normalize in the training process."""
    return _UINT8_TRANSPORT.enabled()


def set_uint8_transport(enabled: bool) -> None:
    """Turn the uint8 crop transport on or off (for datasets built afterwards)."""
    _UINT8_TRANSPORT.set(enabled, "set_uint8_transport")


def uint8_transport(enabled: bool):
    """Context manager: datasets built in the block carry uint8 crops, or float32 ones."""
    return _UINT8_TRANSPORT.scoped(enabled, "uint8_transport")
