"""What every entry point (``run/*.py``) shares: argument parsing and how errors end a command.

* :func:`parser` builds an ``argparse`` parser with ``--verbose`` (Jittor's info lines, see
  :mod:`models.env`) and, with ``trust_pickle=True``, ``--trust-pickle``;
* :func:`parse_args` parses with ``parse_intermixed_args``: dotted ``key=value`` overrides may
  stand before, between and after the flags;
* :func:`run` calls an entry point's ``main`` and turns a *user* error (a bad config value, a
  missing or corrupt file, an unsafe pickle, an unknown model, ...) into one line on stderr and
  exit code 2. Anything else is a bug and keeps its traceback.
"""
import argparse
import sys
from typing import Callable, Optional, Sequence

from jhssl.errors import UserError

EXIT_USER_ERROR = 2

TRUST_PICKLE_HELP = ("unpickle any object in the checkpoint: pickles can run code when loaded, so only for "
                     "files you trust (by default only arrays, containers and numbers are accepted)")


def user_errors() -> tuple:
    """The exception types that mean 'the input is wrong' (printed as one line, exit code 2)."""
    from models.registry import ModelError
    return (UserError, ModelError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def parser(description: str, trust_pickle: bool = False, **kwargs) -> argparse.ArgumentParser:
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    p = argparse.ArgumentParser(description=description, **kwargs)
    p.add_argument("--verbose", action="store_true",
                   help="show Jittor's info lines (compiler, cache, ...; also JHSSL_VERBOSE=1)")
    if trust_pickle:
        p.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    return p


def parse_args(p: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``parse_intermixed_args``: positional overrides may come anywhere among the flags."""
    return p.parse_intermixed_args(argv)


def error_line(prog: str, err: BaseException) -> str:
    # KeyError quotes its message in str(); print the message itself
    msg = str(err.args[0]) if type(err) is KeyError and len(err.args) == 1 else str(err)
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in msg:
        msg = f"{msg}: {err.filename}"
    return f"{prog}: error: {msg}"


def run(main: Callable[..., int], argv: Optional[Sequence[str]] = None, prog: Optional[str] = None,
        extra_errors: tuple = ()) -> int:
    """``main(argv)``'s exit code; a user error (``user_errors()`` + ``extra_errors``) prints one line
    on stderr and gives 2; other exceptions propagate with their traceback."""
    import os
    prog = prog or os.path.basename(sys.argv[0] or "jhssl")
    try:
        code = main(argv)
    except user_errors() + tuple(extra_errors) as e:
        print(error_line(prog, e), file=sys.stderr)
        return EXIT_USER_ERROR
    return 0 if code is None else int(code)
