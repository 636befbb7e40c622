"""Atomic file output: nothing jhssl writes (checkpoints, exports, logs, plots, results) is ever
left half-written. Data goes to a temporary file in the destination's directory, which is renamed
over the destination only once complete (``os.replace`` is atomic on POSIX file systems); on any
error the temporary file is removed and the destination keeps its previous content.
"""
import contextlib
import io
import os
import tempfile
from typing import Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it over ``path`` when the block succeeds.

    For writers that take a file name (``jt.save``, ``PIL.Image.save``). The temporary name keeps
    ``path``'s extension, for writers that pick a format from it.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    ext = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp" + ext, dir=directory)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600 files; give outputs the usual permissions (0666 minus the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write(f)`` on a binary file that becomes ``path`` only once ``write`` returns."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
