"""Error types shared across jhssl (a leaf module: imports nothing from jhssl).

:class:`UserError` marks a problem with what the user gave (a file, a config, an option), as
opposed to a bug: entry points (``jhssl.cli``) print a user error as one line and exit with 2,
and keep the traceback for everything else.
"""
import pickle


class UserError(Exception):
    """Base of the errors a user can fix (bad input); printed as one line by the entry points."""


class CorruptFileError(UserError, ValueError):
    """The file is truncated or damaged (or is not a weights file at all)."""


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """The pickle references a global outside the allow-list."""


class TorchMissingError(UserError, RuntimeError):
    """An operation needs PyTorch, which is not installed."""

    @classmethod
    def writing_pth(cls, path: str, alternative: str = "write safetensors instead (--safetensors, or an "
                    "output path ending in .safetensors), which needs no torch and loads with "
                    "safetensors.torch.load_file") -> "TorchMissingError":
        """The one message for 'this .pth output needs torch' (export, convert, weights_io)."""
        return cls(f"writing '{path}' as a PyTorch .pth file needs torch, which is not installed; {alternative}")


class ArchMismatchError(UserError, ValueError):
    """The checkpoint holds another architecture (a tensor of the wrong shape)."""


class StrictLoadError(UserError, KeyError, ValueError):
    """Missing or unexpected keys under strict loading (a KeyError too: a key is what is wrong)."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()
