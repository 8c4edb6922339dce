"""Files written so that nothing is lost, and paths checked before any work.

What it holds: `probe` (a path's stat, with names the OS refuses turned into one line),
`without_bom` (the one place a UTF-8 byte order mark is dropped from text read from a file or stdin),
`check_writable_target` (an output path checked before any work), `os_refusal`, and the one way
sgpt writes a file: `atomic_path` (`atomic_write_bytes`, `atomic_write_text` over it).

`atomic_path` writes under a hidden temporary name beside the target (`.NAME.PID.RANDOM.tmp`), fsyncs
it, renames it over the target, then fsyncs the folder, so a crash, a power cut or Ctrl-C never leaves
half a file or an empty one. It replaces regular files only: a directory, character or block device,
FIFO or socket (or a symbolic link to one) is refused in one line, never replaced. A symbolic link to
a regular file is written through: the file it points to is replaced, the link stays. An existing
file keeps its permission bits (and its owner and group where the OS lets us). A file with several
hard links is replaced under this name only: the other names keep the previous contents (the rename
is what makes the write atomic; writing in place would let a crash tear every name at once).
Temporaries left by a process that was killed with SIGKILL (the PID in their name is gone) are
removed the next time the same target is written.

What it does not do: decide what to write (checkpoint, export, chat do), print, or import torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Iterator

from sgpt_cli.errors import SgptError, shown

TEMP_NAME_KEEP = 100  # characters of the target's name kept in a temporary's name (255-byte limit)


_TEMP = re.compile(r"^\.(?P<name>.*)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp(?:\..+)?$")


def without_bom(text: str) -> str:
    """`text` without a leading byte order mark: an editor's mark of UTF-8, not part of the text."""
    return text[1:] if text.startswith("\ufeff") else text


def os_refusal(exc: BaseException, path, what: str) -> SgptError:
    """An OSError or ValueError about a file name, as one line that says what is wrong with it."""
    name = shown(path)
    if isinstance(exc, ValueError):  # Python refuses NUL bytes before the OS sees the name
        return SgptError(f"{what} {name} contains a NUL byte, which no file name can hold; give another name")
    code = getattr(exc, "errno", None)
    if code == errno.ENAMETOOLONG:
        return SgptError(f"{what} {name} is too long a name for the file system "
                         f"({len(os.fsencode(str(path)))} bytes); give a shorter one")
    if code == errno.ELOOP:
        return SgptError(f"{what} {name} is a loop of symbolic links; give a real file")
    if code == errno.ENOTDIR:
        return SgptError(f"{what} {name}: {_blocker(Path(path).parent)} is a file, not a folder")
    if code == errno.EACCES:
        return SgptError(f"{what} {name}: permission denied")
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return SgptError(f"{what} {name}: {reason}")


def probe(path, what: str) -> os.stat_result | None:
    """The stat of `path` (symbolic links followed), None if nothing is there; a name the OS refuses
    (too long, a NUL byte, a link loop) raises SgptError in one line."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise os_refusal(exc, path, what) from None


def kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def check_writable_target(path: Path, what: str = "--out", create_parents: bool = True) -> Path:
    """Fail early, before hours of work, when `path` cannot be written; return the file to replace
    (`path` itself, or the regular file a symbolic link at `path` points to)."""
    path = Path(path)
    st = probe(path, what)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise SgptError(f"{what} {shown(path)} is a directory; give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise SgptError(f"{what} {shown(path)} is {kind_of(st.st_mode)}, not a regular file: sgpt replaces only "
                        "regular files; give a file name")
    if os.path.islink(path):  # a link to a regular file (or to nothing yet): write the file it names
        path = Path(os.path.realpath(path))
    parent = path.parent
    pst = probe(parent, what)
    if pst is None:
        if not create_parents:
            raise SgptError(f"cannot write {what} {shown(path)}: folder {shown(parent)} does not exist; "
                            "create it first, or give a path in an existing folder")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise SgptError(f"cannot write {what} {shown(path)}: {_blocker(parent)} is a file, not a folder") from None
        except OSError as exc:
            raise SgptError(f"cannot create the folder for {what} {shown(path)}: {exc.strerror}") from None
    elif not stat.S_ISDIR(pst.st_mode):
        raise SgptError(f"cannot write {what} {shown(path)}: {shown(parent)} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SgptError(f"cannot write {what} {shown(path)}: folder {shown(parent)} is not writable")
    return path


def _blocker(parent: Path) -> str:
    """The component of `parent` that is a file where a folder should be."""
    for folder in reversed([parent, *parent.parents]):
        if folder.exists() and not folder.is_dir():
            return shown(folder)
    return shown(parent)


def temp_name(target: Path) -> str:
    """`.NAME.PID.RANDOM.tmp`: hidden, beside the target, and telling which process owns it."""
    return f".{target.name[:TEMP_NAME_KEEP]}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or we cannot tell): keep its file
    return True


def clean_stale_temporaries(target: Path) -> list[str]:
    """Remove temporaries of `target` (ours by name: `.NAME.PID.RANDOM.tmp` and anything the writer
    hung under that name, e.g. `.tmp.fp32`) whose process no longer runs; return their names."""
    target = Path(target)
    removed = []
    try:
        entries = list(os.scandir(target.parent if str(target.parent) else "."))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if not m or m["name"] != target.name[:TEMP_NAME_KEEP] or _alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
    return removed


def _fsync(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return  # some file systems refuse to open folders; the rename itself is still atomic
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path, what: str = "--out", create_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, fsync it, give it the existing
    file's mode (and owner), rename it over `path` and fsync the folder. Any failure removes it."""
    target = check_writable_target(Path(path), what, create_parents)
    existing = probe(target, what)
    clean_stale_temporaries(target)
    tmp = target.parent / temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private while being written
    except OSError as exc:
        raise SgptError(f"cannot write {what} {shown(target)}: {exc.strerror}") from None
    os.close(fd)
    try:
        yield tmp
        _fsync(tmp)  # the data is on the disk before the name points at it
        if existing is not None:
            os.chmod(tmp, stat.S_IMODE(existing.st_mode))
            if (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(OSError):  # only root (or a group member) may give it back
                    os.chown(tmp, existing.st_uid, existing.st_gid)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        _fsync(target.parent, directory=True)  # the rename itself survives a power cut
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes, what: str = "--out", create_parents: bool = True) -> None:
    with atomic_path(path, what, create_parents) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str, what: str = "--out", create_parents: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), what, create_parents)
