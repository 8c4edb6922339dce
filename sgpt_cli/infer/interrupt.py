"""Ctrl-C ends any ONNX Runtime run, however long one step of the graph takes.

Why: CPython runs a Python signal handler only between bytecodes, so a Ctrl-C that lands while the
main thread is inside `session.run` waits for the run to return: forever, for a graph that never
ends a step. ONNX Runtime can stop a run from another thread (`RunOptions.terminate = True`, checked
between nodes); this module makes a signal do that, without a thread per run (a decode step takes
about 0.4 ms).

How: `signal.set_wakeup_fd` makes CPython's C-level handler write the signal's number to a socket
at the instant the signal arrives, in whatever thread it lands. One daemon thread per process (the
watchdog, started on first use) blocks on the other end of that socket; for a signal the active
guard routes (SIGINT; SIGTERM and SIGHUP where the command treats them as Ctrl-C) it sets
`terminate` on the guard's RunOptions. The run returns with ONNX Runtime's "terminated" error,
and the Python handler raises KeyboardInterrupt as usual; whichever of the two the caller sees
first, the guard's block ends in KeyboardInterrupt (never an ONNX Runtime error), so the command
exits 130 with "interrupted" as for any Ctrl-C.

Use (one guard per generation; each guard has a fresh RunOptions, since a terminated one stays so):

    with RunGuard() as run_options:       # or RunGuard((SIGINT, SIGTERM, SIGHUP))
        outs = session.run(names, feed, run_options)
        ...                                # any number of runs, same RunOptions

or `guard.run(session, names, feed)`. Outside the main thread (where no signal handler runs) the
guard is a plain RunOptions. Guards nest: the innermost is the one a signal terminates.

What it does not do: install Python signal handlers (cli_common.terminate_as_interrupt and
hangup_as_interrupt do), import numpy or torch.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading

# the signals a guard routes unless told otherwise: Ctrl-C
DEFAULT_SIGNALS = (signal.SIGINT,)
# onnxruntime's Python `run_with_iobinding` (1.31) reads this entry of the RunOptions on every run;
# when it is unset the lookup fails inside pybind11 and costs ~0.05 ms (timeit: 49 us, 0.3 us when
# set), ~10% of a one-row decode step. "0" is the value it assumes when the entry is unset.
GRAPH_ID_ENTRY, GRAPH_ID_DEFAULT = "gpu_graph_id", "0"


class _Watchdog:
    """The process's one watchdog thread and the socket CPython writes signal numbers to."""

    def __init__(self):
        self.read_end, self.write_end = socket.socketpair()
        self.write_end.setblocking(False)  # the C handler must never block
        self.lock = threading.Lock()
        self.stack: list[RunGuard] = []  # active guards, innermost last
        self.thread = threading.Thread(target=self._watch, name="sgpt-interrupt-watchdog", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while True:
            try:
                data = self.read_end.recv(64)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                guard = self.stack[-1] if self.stack else None
                if guard is not None and any(n in guard.signals for n in data):
                    guard.terminate()

    def drain(self) -> None:
        """Bytes not yet read (a signal that came as the guard ended) belong to no run."""
        try:
            while self.read_end.recv(64, socket.MSG_DONTWAIT):
                pass
        except OSError:  # BlockingIOError: nothing left
            pass


_WATCHDOG: _Watchdog | None = None
_START = threading.Lock()


def _watchdog() -> _Watchdog:
    global _WATCHDOG
    with _START:
        if _WATCHDOG is None:
            _WATCHDOG = _Watchdog()
        return _WATCHDOG


class RunGuard(contextlib.AbstractContextManager):
    """A RunOptions that the routed signals terminate while the guard is active (module doc)."""

    def __init__(self, signals=DEFAULT_SIGNALS, run_options=None):
        import onnxruntime as ort

        self.signals = frozenset(int(s) for s in signals)
        if run_options is None:
            run_options = ort.RunOptions()
            run_options.add_run_config_entry(GRAPH_ID_ENTRY, GRAPH_ID_DEFAULT)
        self.run_options = run_options
        self.terminated = False  # a routed signal came while active
        self._previous_fd: int | None = None
        self._armed = False

    def terminate(self) -> None:
        self.terminated = True
        self.run_options.terminate = True

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self.run_options  # no signal handler runs here; nothing to route
        dog = _watchdog()
        with dog.lock:
            # warn_on_full_buffer=False: a burst of signals may fill the socket; one byte is enough
            self._previous_fd = signal.set_wakeup_fd(dog.write_end.fileno(), warn_on_full_buffer=False)
            dog.stack.append(self)
        self._armed = True
        return self.run_options

    def __exit__(self, exc_type, exc, tb):
        if self._armed:
            dog = _watchdog()
            with dog.lock:
                if self in dog.stack:
                    dog.stack.remove(self)
                if not dog.stack:
                    dog.drain()
                signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
            self._armed = False
        if self.terminated and exc_type is not None and issubclass(exc_type, Exception):
            # ONNX Runtime's "terminated" error (or the caller's one-line wrapper of it): a Ctrl-C
            raise KeyboardInterrupt from None
        return False

    def run(self, session, output_names, feed):
        """`session.run` with this guard's RunOptions; a terminated run raises KeyboardInterrupt."""
        try:
            return session.run(output_names, feed, self.run_options)
        except Exception:
            if self.terminated or self.run_options.terminate:
                raise KeyboardInterrupt from None
            raise

