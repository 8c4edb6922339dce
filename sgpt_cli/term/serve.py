"""`sgpt serve`: the flags (sgpt_cli.settings.SERVE), and a call into sgpt_cli.web.server inside the command.

The web stack (Starlette, uvicorn, sse-starlette) is the `serve` extra: without it the command says
in one line how to install it. Nothing here imports it, or ONNX Runtime, until the command runs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from sgpt_cli.term.common import END_SIGNALS, require_extra, terminate_as_interrupt, typer_command
from sgpt_cli.settings import SERVE

DOC = """Serve the model over HTTP with OpenAI's API (completions, chat, models), all requests sharing
the decode steps (continuous batching).

\b
sgpt serve                           # http://127.0.0.1:8000/v1
sgpt serve --port 0 --api-key KEY    # a free port; clients send Authorization: Bearer KEY
curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' -d '{"prompt": "ROMEO:"}'

Ctrl-C, SIGTERM or SIGHUP stops it: running streams end cleanly, the exit status is 130.
"""


@contextlib.contextmanager
def signals_after_imports() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP held while extension modules are imported, then raised as
    KeyboardInterrupt: raised inside a C extension's initialisation (onnxruntime's pybind11 module)
    it becomes `ImportError: initialization failed`, a traceback instead of one line."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    held = (signal.SIGINT, *END_SIGNALS)
    previous = {sig: signal.signal(sig, lambda signum, frame: got.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if got:
        raise KeyboardInterrupt


def _run(**values) -> int:
    # SIGTERM or SIGHUP while the web stack is imported or the model loads unwinds like Ctrl-C (exit
    # 130, one line), as it does once the server runs
    with terminate_as_interrupt():
        with signals_after_imports():
            require_extra("serve")
            import onnxruntime  # noqa: F401 (imported here, under the guard, rather than while loading the model)
            from sgpt_cli.web.server import serve

        return serve(**values)


serve_cmd = typer_command("serve", DOC, SERVE, _run)
