"""The corpus: strict reading, nanoGPT's 90/10 split, the character vocabulary, and the download of
the default text (against a local HTTP server on 127.0.0.1: success, wrong checksum, refused
connection, a body cut short), directly and through `sgpt train`."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sgpt_cli import data
from sgpt_cli.term.app import app
from sgpt_cli.errors import SgptError
from sgpt_cli.infer.tokenizer import CharTokenizer

BODY = ("ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 120).encode("utf-8")
BODY_SHA = hashlib.sha256(BODY).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """/ok: the whole body; /short: announces the whole body, sends half, hangs up; else 404."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path not in ("/ok", "/short"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if self.path == "/ok":
            self.wfile.write(BODY)
        else:
            self.wfile.write(BODY[: len(BODY) // 2])
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, *args):
        pass  # keep test output clean


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """A proxy from the environment must not intercept requests to 127.0.0.1."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/input.txt"  # nothing listens there once the socket is closed


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_one_line(message: str, *needles: str) -> None:
    assert "\n" not in message.strip()
    for needle in needles:
        assert needle in message


# --- the split and the vocabulary ---

def test_split_is_first_90_percent_train_last_10_percent_val():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val = data.split_text(text)
    assert train == text[:900] and val == text[900:]
    train, val = data.split_text("0123456789abcde")  # 15 chars: int(13.5) = 13 train, as nanoGPT
    assert (train, val) == ("0123456789abc", "de")


def test_vocabulary_is_the_sorted_set_of_characters_and_round_trips_as_json():
    text = "to be, or not to be: that is the question.\nÆ…"
    tok = CharTokenizer.from_text(text)
    assert tok.chars == sorted(set(text))
    assert json.loads(tok.to_json()) == tok.chars
    assert CharTokenizer.from_json(tok.to_json()).decode(tok.encode(text)) == text


def test_read_text_returns_the_text_and_the_sha256_of_its_bytes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffhello wörld".encode("utf-8"))
    text, sha = data.read_text(path)
    assert text == "hello wörld"  # the byte-order mark is not text
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind, needle", [
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("latin1", "not UTF-8"),
    ("folder", "is a folder"),
])
def test_read_text_refuses_bad_files_with_one_line(tmp_path, kind, needle):
    path = tmp_path / "data.txt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "latin1":
        path.write_bytes("Méditations à la façon de".encode("latin-1"))
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(SgptError) as info:
        data.read_text(path)
    assert_one_line(str(info.value), needle, "data")


# --- the download ---

def test_download_writes_the_verified_file(server, tmp_path):
    dest = tmp_path / "data" / "tinyshakespeare.txt"
    seen = []
    data.download(f"{server}/ok", dest, BODY_SHA, progress=lambda done, total: seen.append((done, total)))
    assert dest.read_bytes() == BODY
    assert seen[-1] == (len(BODY), len(BODY))
    assert files_in(tmp_path) == ["data", "data/tinyshakespeare.txt"]  # no temporary file left


def test_download_with_a_wrong_sha256_leaves_no_file(server, tmp_path):
    dest = tmp_path / "data" / "tinyshakespeare.txt"
    with pytest.raises(SgptError) as info:
        data.download(f"{server}/ok", dest, "0" * 64)
    assert_one_line(str(info.value), "SHA-256", "--data")
    assert files_in(tmp_path) == []


def test_download_from_an_unreachable_server_says_how_to_provide_the_file(tmp_path):
    dest = tmp_path / "data" / "tinyshakespeare.txt"
    url = closed_port_url()
    with pytest.raises(SgptError) as info:
        data.download(url, dest, BODY_SHA, timeout=5)
    assert_one_line(str(info.value), "could not download", url, str(dest), "--data PATH")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("sha", [BODY_SHA, None])
def test_download_cut_short_leaves_no_file(server, tmp_path, sha):
    # without a checksum the length check alone must catch it
    dest = tmp_path / "data" / "tinyshakespeare.txt"
    with pytest.raises(SgptError) as info:
        data.download(f"{server}/short", dest, sha, timeout=5)
    assert_one_line(str(info.value), "broke off", f"of {len(BODY)} bytes")
    assert files_in(tmp_path) == []


def test_download_of_a_missing_page_names_the_http_status(server, tmp_path):
    with pytest.raises(SgptError) as info:
        data.download(f"{server}/nothing-here", tmp_path / "x.txt", None, timeout=5)
    assert_one_line(str(info.value), "HTTP 404")
    assert files_in(tmp_path) == []


def test_ensure_default_data_reads_the_address_when_called(server, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", f"{server}/ok")
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_SHA256", BODY_SHA)
    dest = tmp_path / "tinyshakespeare.txt"
    assert data.ensure_default_data(dest) == dest
    assert dest.read_bytes() == BODY
    dest.write_text("already here")
    data.ensure_default_data(dest)  # an existing file is used as it is
    assert dest.read_text() == "already here"


TRAIN_FAST = ["--preset", "tiny", "--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1",
              "--sample-chars", "0", "--device", "cpu"]


def test_train_without_data_downloads_the_default_text_when_sgpt_has_no_copy(server, tmp_path, monkeypatch,
                                                                           isolated_home):
    """The download path, kept for an install without the packaged copy (its checksum is not the
    one asked for here) and for any text `download` fetches; outside a checkout it writes into
    $SGPT_HOME/data, never into the current folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", f"{server}/ok")
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_SHA256", BODY_SHA)
    result = CliRunner().invoke(app, ["train", *TRAIN_FAST, "--out", "m/model.pt"])
    assert result.exit_code == 0, result.output
    assert (isolated_home / "data" / "tinyshakespeare.txt").read_bytes() == BODY
    assert not (tmp_path / "data").exists()
    assert "downloading tiny-shakespeare" in result.stdout and "SHA-256 verified" in result.stdout
    assert (tmp_path / "m" / "model.pt").exists()


def test_without_network_the_packaged_text_is_unpacked_and_checked(tmp_path, monkeypatch, isolated_home):
    """With no network, the copy inside the package is the text (tiny-shakespeare's
    SHA-256, checked), written once to $SGPT_HOME/data outside a checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", closed_port_url())
    assert data.PACKAGED_CORPUS.stat().st_size < 400_000  # xz: a third of the 1.1 MB text
    assert data.default_data() == isolated_home / "data" / "tinyshakespeare.txt"
    assert data.default_data_source() == "packaged"
    path = data.ensure_default_data(data.default_data())
    raw = path.read_bytes()
    assert len(raw) == 1_115_394 and hashlib.sha256(raw).hexdigest() == data.TINY_SHAKESPEARE_SHA256
    assert files_in(tmp_path) == sorted(["sgpt-home", "sgpt-home/data", "sgpt-home/data/tinyshakespeare.txt"])


def test_train_offline_trains_on_the_packaged_text(tmp_path, monkeypatch, isolated_home):
    """`sgpt train` with no network and no --data, from a folder that is no checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", closed_port_url())
    result = CliRunner().invoke(app, ["train", *TRAIN_FAST, "--out", "m/model.pt"])
    assert result.exit_code == 0, result.output
    assert "unpacked tiny-shakespeare from the copy inside sgpt" in result.stdout
    assert (tmp_path / "m" / "model.pt").exists() and not (tmp_path / "data").exists()
    written = isolated_home / "data" / "tinyshakespeare.txt"
    assert hashlib.sha256(written.read_bytes()).hexdigest() == data.TINY_SHAKESPEARE_SHA256


def test_in_a_checkout_or_beside_a_data_folder_the_text_is_data_tinyshakespeare(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tinyshakespeare.txt").write_text("ROMEO:\n")
    assert data.default_data() == Path("data/tinyshakespeare.txt")  # the README's own path
    other = tmp_path / "clone"
    (other / "sgpt_cli").mkdir(parents=True)
    (other / "sgpt_cli" / "__init__.py").write_text("")
    (other / "pyproject.toml").write_text("")
    assert data.default_data(cwd=other) == other / "data" / "tinyshakespeare.txt"


def test_train_without_network_and_without_the_packaged_copy_gives_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", closed_port_url())
    monkeypatch.setattr(data, "PACKAGED_CORPUS", tmp_path / "trimmed" / "tinyshakespeare.txt.xz")
    result = CliRunner().invoke(app, ["train", *TRAIN_FAST, "--out", "m/model.pt"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgpt: error: could not download")
    assert "--data PATH" in lines[0] and "data/tinyshakespeare.txt" in lines[0]
    assert "Traceback" not in result.output
    assert files_in(tmp_path) == []


def test_a_terminal_sees_a_download_progress_bar(server, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from sgpt_cli.term.fetch import fetch_default_data

    monkeypatch.setattr(data, "TINY_SHAKESPEARE_URL", f"{server}/ok")
    monkeypatch.setattr(data, "TINY_SHAKESPEARE_SHA256", BODY_SHA)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    dest = tmp_path / "tinyshakespeare.txt"
    fetch_default_data(dest, console)
    assert dest.read_bytes() == BODY
    shown = screen.getvalue()
    assert "tinyshakespeare.txt" in shown and f"{len(BODY) / 1000:.1f}" in shown  # the bar's byte count
    assert "SHA-256 verified" in shown
