"""Output files: the checks and the atomic write shared by golden files, profiles and training curves.

    check_output_path(path, option)     fail early, in one line, when ``path`` cannot be written
    atomic_write(path, write)           ``path`` holds either its old content or the complete new file
    require_pyplot()                    matplotlib's pyplot on the Agg backend, or one line naming the extra
    write_figure(figure, path, fmt)     a matplotlib figure written with atomic_write, then closed

Errors are one line: ``OutputError`` (a ValueError) naming the path that cannot be written,
ImportError naming the extra to install when matplotlib is missing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from types import ModuleType
from typing import IO, Any, TypeAlias

PathLike: TypeAlias = str | os.PathLike[str]

PLOT_EXTRA_HINT = 'matplotlib is not installed; figures need the plot extra: pip install "lnref[plot]"'


class OutputError(ValueError):
    """A file that cannot be written where asked; the message is one line naming the path."""


def check_output_path(path: PathLike, option: str | None = None) -> str:
    """The absolute directory that ``path`` would be written in.

    Raises OutputError when ``path`` is a directory, when its directory is missing or is not
    a directory, or when no file can be created there. The message starts with ``option``
    (say "--png") when given, so that a command-line user sees which option is at fault.

    Creating and removing a file in the directory is the test: permission bits alone do not
    tell (a read-only file system, or running as root).
    """
    path = os.fspath(path)
    directory = _target_directory(path, option)
    try:
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".lnref-check-")
        os.close(handle)
        os.remove(probe)
    except OSError as err:
        raise OutputError(_message(path, f"directory {directory} is not writable ({_reason(err)})", option)) from None
    return directory


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(handle)`` on a new binary file that then replaces ``path``.

    The file is created in ``path``'s own directory, because only a rename within one file
    system is atomic. It is flushed to disk before the rename, so a reader, an interruption
    or a crash finds either the old file or the complete new one, never a part. Its
    permissions are those an ordinary ``open`` gives a new file: 0o666 less the umask.

    An OSError on the way (a missing directory, a full disk) becomes an OutputError naming
    ``path``; any other exception from ``write`` propagates as it is. Either way the
    temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    directory = _target_directory(path, None)
    try:
        # Named after the target so that one left by a crash is recognisable; shortened, since the
        # random part and the suffix must still fit in the file system's limit on a name.
        prefix = f".{os.path.basename(path)[:64]}."
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    except OSError as err:
        raise OutputError(_message(path, f"directory {directory} is not writable ({_reason(err)})")) from None
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp makes the file private (0o600); the result should not differ from a plain open().
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(err, OSError):
            raise OutputError(_message(path, _reason(err))) from None
        raise


def require_pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend; ImportError naming the ``lnref[plot]`` extra
    when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(PLOT_EXTRA_HINT) from None
    matplotlib.use("Agg")  # figures go to files; no display is needed or assumed
    import matplotlib.pyplot as plt

    return plt


def write_figure(figure: Any, path: PathLike, fmt: str, **options: Any) -> None:
    """Write a matplotlib ``figure`` to ``path`` in format ``fmt`` (png, svg, ...) with
    :func:`atomic_write`, then close it; ``options`` go to ``figure.savefig``."""
    plt = require_pyplot()
    try:
        atomic_write(path, lambda stream: figure.savefig(stream, format=fmt, **options))
    finally:
        plt.close(figure)


def _target_directory(path: str, option: str | None) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(_message(path, "it is a directory", option))
    if not os.path.isdir(directory):
        problem = (
            f"{directory} is not a directory" if os.path.exists(directory) else f"directory {directory} does not exist"
        )
        raise OutputError(_message(path, problem, option))
    return directory


def _message(path: str, problem: str, option: str | None = None) -> str:
    text = f"cannot write {path}: {problem}"
    return f"{option}: {text}" if option else text


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def _umask() -> int:
    # Python reads the umask only by setting another. The stand-in is a private one, so that a
    # file another thread creates in that instant is never more open than its owner asked.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
