"""Corpora: find, unpack or download the training text, read it strictly, split it as nanoGPT does.

The default text, tiny-shakespeare, ships inside the package (`sgpt_cli/corpus/tinyshakespeare.txt.xz`,
0.36 MB, SHA-256 checked when unpacked), so `sgpt train` and `sgpt eval` need no network. It is
unpacked on first use to `default_data()`: `data/tinyshakespeare.txt` in the current folder when
that file is there or the folder is an sgpt checkout, else `$SGPT_HOME/data/tinyshakespeare.txt`
(sgpt_cli.home). Without the packaged copy (a trimmed install) it is downloaded, as any text with
`download` is.

No torch here (`sgpt eval` reads the same split). Downloading reports progress through a callback;
the CLI draws the bar.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from sgpt_cli.errors import SgptError, shown

from sgpt_cli.files import atomic_path, probe, without_bom
from sgpt_cli.home import data_home, in_checkout

DATA_NAME = "tinyshakespeare.txt"
CHECKOUT_DATA = Path("data") / DATA_NAME  # a checkout's (and the README's) place for it
PACKAGED_CORPUS = Path(__file__).resolve().parent / "corpus" / (DATA_NAME + ".xz")
# the address char-rnn and nanoGPT download tiny-shakespeare from
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TRAIN_FRACTION = 0.9  # nanoGPT's split: first 90% train, last 10% validation
# the largest corpus read: training holds the text and its ids (8 bytes a character) in memory, so
# 256 MB is ~2.3 GB of RAM; anything larger (or endless: --data /dev/zero) is refused at this size
MAX_CORPUS_BYTES = 256 << 20
READ_CHUNK = 1 << 20  # bytes read at a time, so an endless file is stopped at the limit


def default_data(environ=None, cwd: Path | None = None) -> Path:
    """Where the default text is read from (and unpacked to on first use): ./data/tinyshakespeare.txt
    when it is there or the current folder is an sgpt checkout, else $SGPT_HOME/data/ (the user's
    data folder: an installed sgpt run from /tmp must not write /tmp/data)."""
    import os

    cwd = Path.cwd() if cwd is None else Path(cwd)
    local = cwd / CHECKOUT_DATA
    if local.exists() or in_checkout(cwd):
        return CHECKOUT_DATA if cwd == Path.cwd() else local
    return data_home(os.environ if environ is None else environ) / "data" / DATA_NAME


def __getattr__(name: str):
    """`DEFAULT_DATA` is `default_data()` at the moment it is read (the current folder and $SGPT_HOME
    can change after import)."""
    if name == "DEFAULT_DATA":
        return default_data()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def packaged_text(sha256: str | None = None) -> bytes | None:
    """The copy of tiny-shakespeare inside the package, if it is there, whole, and has `sha256`
    (tiny-shakespeare's by default); else None (the caller downloads)."""
    import lzma

    try:
        raw = lzma.decompress(PACKAGED_CORPUS.read_bytes())
    except (OSError, lzma.LZMAError):
        return None
    return raw if sha256_bytes(raw) == (sha256 or TINY_SHAKESPEARE_SHA256) else None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(url: str, dest: Path, sha256: str | None,
             progress: Callable[[int, int | None], None] | None = None, timeout: float = 30.0) -> None:
    """Fetch `url` into `dest` atomically; verify its SHA-256 before the file appears.

    Nothing is written unless the whole body arrived and matched: a dropped connection, a wrong
    checksum or Ctrl-C leave no file behind.
    """
    dest = Path(dest)
    hint = f"download it by hand from {url} and save it as {dest}, or pass --data PATH"
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = response.length
            chunks = []
            while True:
                chunk = response.read(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except http.client.IncompleteRead as exc:
        got = done + len(exc.partial)
        expected = f" of {got + exc.expected}" if exc.expected is not None else ""
        raise SgptError(f"the download of the training text broke off after {got}{expected} bytes; {hint}") from None
    except urllib.error.HTTPError as exc:
        raise SgptError(f"could not download the training text (HTTP {exc.code} {exc.reason}); {hint}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        reason = " ".join(str(reason).split())  # one line, whatever the platform's message holds
        raise SgptError(f"could not download the training text ({reason}); {hint}") from None
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise SgptError(f"the download of the training text broke off after {len(data)} of {total} bytes; {hint}")
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise SgptError(f"the downloaded file's SHA-256 does not match the expected one; {hint}")
    _write_corpus(dest, data)


def _write_corpus(dest: Path, data: bytes) -> None:
    """`data` at `dest`, whole or not at all (atomic_path removes its temporary on any failure); a
    write the disk refuses (full, read-only, quota) is one line that says where else the text can go."""
    try:
        with atomic_path(dest, "the training text") as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise SgptError(f"cannot write the training text to {shown(dest)} ({exc.strerror or exc}; it needs "
                        f"{len(data) / 1e6:.1f} MB): make room there, set $SGPT_HOME to another folder, or pass "
                        "--data PATH") from None


def ensure_default_data(path: Path, url: str | None = None, sha256: str | None = None,
                        progress: Callable[[int, int | None], None] | None = None) -> Path:
    """The default corpus at `path`, written on first use from the packaged copy (no network), else
    downloaded (url and checksum default to tiny-shakespeare's); atomically, SHA-256 checked."""
    path = Path(path)
    if not path.exists():
        packaged = packaged_text(sha256) if url is None else None
        if packaged is not None:
            _write_corpus(path, packaged)
        else:
            download(url or TINY_SHAKESPEARE_URL, path, sha256 or TINY_SHAKESPEARE_SHA256, progress)
    return path


def default_data_source(sha256: str | None = None) -> str:
    """How `ensure_default_data` would get the text: "packaged" or "download"."""
    return "packaged" if packaged_text(sha256) is not None else "download"


def read_text(path: Path, min_chars: int = 2) -> tuple[str, str]:
    """(text, sha256 of the bytes). Strict UTF-8: a wrong encoding is an error, not mojibake."""
    path = Path(path)
    if probe(path, "data file") is None:
        raise SgptError(f"data file {path} does not exist; pass --data PATH to a UTF-8 text file")
    if path.is_dir():
        raise SgptError(f"data path {path} is a folder; pass --data PATH to a UTF-8 text file")
    raw = _read_bounded(path)
    if not raw:
        raise SgptError(f"data file {path} is empty; give a UTF-8 text file with some text in it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SgptError(
            f"data file {path} is not UTF-8 text (bad byte at offset {exc.start}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None
    text = without_bom(text)
    if len(text) < min_chars:
        raise SgptError(f"data file {path} is too short ({len(text)} characters; need {min_chars})")
    return text, sha256_bytes(raw)


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, refused once they pass MAX_CORPUS_BYTES (a device or FIFO may never end)."""
    data = bytearray()
    try:
        with open(path, "rb") as f:
            while len(data) <= MAX_CORPUS_BYTES:
                chunk = f.read(min(READ_CHUNK, MAX_CORPUS_BYTES + 1 - len(data)))
                if not chunk:
                    return bytes(data)
                data += chunk
    except OSError as exc:
        raise SgptError(f"cannot read data file {path}: {exc.strerror}") from None
    raise SgptError(f"data file {path} is larger than sgpt's limit of {MAX_CORPUS_BYTES >> 20} MB (it is read "
                    "into memory, with 8 bytes of ids a character); give a smaller text")


def split_text(text: str) -> tuple[str, str]:
    """nanoGPT's split: the first 90% of characters train, the last 10% validate."""
    n = int(len(text) * TRAIN_FRACTION)
    return text[:n], text[n:]
