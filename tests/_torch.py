"""torch for the parity tests, imported only when a test first touches it.

``from tests._torch import torch, F`` costs nothing at collection, so a machine without torch still
collects and runs every other test. A test that uses torch without it is skipped with the reason
below, except where torch is required (``JHSSL_REQUIRE_TORCH=1``, set by ``bash run/test.sh``, which
installs it: CI), where it fails: there every torch test must run.
"""
import importlib
import os

import pytest

NEEDS_TORCH = ("needs torch (a PyTorch parity or export check); `bash run/test.sh` installs it "
               "(requirements-dev.txt: torch 2.13 CPU)")


def require(name: str = "torch"):
    """Import ``name`` (torch or one of its modules), or skip/fail the calling test with a clear reason."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if os.environ.get("JHSSL_REQUIRE_TORCH") == "1":
            pytest.fail(f"{NEEDS_TORCH}; JHSSL_REQUIRE_TORCH=1 but importing {name} failed: {e}")
        pytest.skip(NEEDS_TORCH)


class _Lazy:
    """A module imported at its first attribute access (through :func:`require`)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(require(self._name), attr)


torch = _Lazy("torch")
F = _Lazy("torch.nn.functional")


def reference():
    """``tests.torch_reference`` (independent torch implementations), after :func:`require`."""
    require("torch")
    return importlib.import_module("tests.torch_reference")


tref = _Lazy("tests.torch_reference")


def available() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


# For tests that are torch through and through: skipped (with the reason) only where torch is
# neither installed nor required.
needs_torch = pytest.mark.skipif(not available() and os.environ.get("JHSSL_REQUIRE_TORCH") != "1",
                                 reason=NEEDS_TORCH)
