"""The one exception type for mistakes a user can fix.

The CLI prints its message on one line and exits non-zero; an OSError (disk full, read-only, no
permission) becomes one line from io_error_message; anything else is a bug.
"""

import errno
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A problem with the user's input, files or order of steps; the message says what to do."""


_IO_ADVICE = {
    errno.ENOSPC: "free some space and run again",
    errno.EDQUOT: "free some space and run again",
    errno.EROFS: "the file system is read-only: use a writable location",
    errno.EACCES: "check the permissions",
    errno.EPERM: "check the permissions",
}


def io_error_message(exc: OSError) -> str:
    """One line for an I/O failure: the path, the cause and what to do. Of a copy that found the
    disk full (shutil names both files), the file being written."""
    written = exc.filename2 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else None
    path = written or (exc.filename if exc.filename is not None else "a file")
    cause = exc.strerror or str(exc)
    advice = _IO_ADVICE.get(exc.errno or 0)
    return f"cannot write or read {path}: {cause}" + (f"; {advice}" if advice else "")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to `limit` characters, for a one-line report
    (library messages can run to many lines); the exception's type name when it has no message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


@contextmanager
def io_context(path: object) -> Iterator[None]:
    """Name `path` in OSErrors raised without a file name (a write() on a full disk has none)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise
