"""Errors a user can cause, and the file-writing discipline that keeps their files whole.

`SgptError` carries a one-line message that the CLI prints instead of a traceback; its exit code
says what kind of failure it was. `atomic_path` writes under a temporary name beside the target and
renames only on success, so a crash or Ctrl-C never leaves half a file. No torch here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


class SgptError(Exception):
    """A failure the user can fix; the message says how. Printed as one line, no traceback."""

    exit_code = 1


class UsageError(SgptError):
    """A bad flag or value (exit 2, as argument errors are)."""

    exit_code = 2


def check_writable_target(path: Path, what: str = "--out") -> None:
    """Fail early, before hours of work, when `path` cannot be written."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise SgptError(f"{what} {path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SgptError(f"cannot create the folder for {what} {path}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SgptError(f"cannot write {what} {path}: folder {parent} is not writable")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    check_writable_target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
