"""The temporary Prefect API server of one ``ddiff`` command, tied to the command's life.

Room: ``flows`` — prefect, standard library.

Why: with no ``PREFECT_API_URL``, Prefect 3.9 starts a temporary API server on first use
(``prefect.server.api.server.SubprocessASGIServer``: a ``uvicorn`` subprocess, ~230 MB) and
stops it from an ``atexit`` hook. A command killed with SIGKILL (or SIGTERM's default action)
never runs that hook, so the server outlives it; and every Dask worker process, seeing no API
URL either, starts a server of its own.

What :func:`command_server` does instead, for the duration of one CLI command: it starts that
same server from the command's main thread, with the child asking the kernel
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``, Linux) to kill it when the command dies, however it dies;
and it points ``PREFECT_API_URL`` at it, in Prefect's settings and in the environment, so the
flow and every process the command starts (Dask workers included) use this one server. With
``PREFECT_API_URL`` already set (a real server), it does nothing.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import types
from contextlib import contextmanager
from typing import Iterator

__all__ = ["command_server", "api_watchdog"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - no prctl: Prefect's own atexit hook is all there is
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _server_class():
    import prefect.server.api.server as srv

    class _TiedServer(srv.SubprocessASGIServer):
        """Prefect's server, started with :func:`_die_with_parent` as the child's pre-exec hook."""

        def _run_uvicorn_command(self):
            real = srv.subprocess
            popen = functools.partial(real.Popen, preexec_fn=functools.partial(_die_with_parent, os.getpid()))
            srv.subprocess = types.SimpleNamespace(Popen=popen, TimeoutExpired=real.TimeoutExpired)
            try:
                return super()._run_uvicorn_command()
            finally:
                srv.subprocess = real

    return _TiedServer


@contextmanager
def command_server() -> Iterator[str | None]:
    """Run the block against a temporary API server that dies with this process; yields its API
    URL (``None`` when ``PREFECT_API_URL`` is already set and used instead)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value() or not sys.platform.startswith("linux"):
        yield None
        return
    import socket

    with socket.socket() as s:  # a free port (Prefect's own choice is random in 8000-8999)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = _server_class()(port)
    server.start()
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by Dask workers and other children
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
        _drain_to(server)
        server.stop()


def _drain_to(server) -> None:
    """Send the logs and events still queued in this process to ``server`` before it stops;
    otherwise Prefect's exit hook finds no server and prints "Error logging to API"."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=5)
        except Exception:  # noqa: BLE001 - a failed flush must not hide the command's own outcome
            pass


#: how often the API is probed, and how long it may stay unreachable before the command gives up
WATCH_EVERY_S, WATCH_LOST_AFTER_S = 5.0, 20.0


@contextmanager
def api_watchdog(describe, every: float | None = None, lost_after: float | None = None) -> Iterator[None]:
    """Stop the command when the Prefect API it runs against goes away, instead of letting Prefect's
    client retry for minutes and dump its event workers' tracebacks at exit.

    Why stop rather than solve on: every task of a flow run needs the API to be created, so the flow
    cannot go on without it; what is solved is already safe (the ledger is written after the data,
    a rerun skips it and gives the same bytes), so the useful thing is to say so early. A thread
    probes ``<PREFECT_API_URL>/health`` every ``every`` s; when it has failed for ``lost_after`` s it
    prints ONE line — ``ddiff: error: lost the Prefect API at …`` + ``describe()`` (what is kept and
    the resume command) — and ends the process with exit code 1 at once (``os._exit``: no atexit
    hooks, so no dumps; the run lock it leaves is stale and the rerun breaks it)."""
    import threading
    import time

    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        yield
        return
    # DDIFF_API_PROBE_S / DDIFF_API_LOST_AFTER_S override the defaults (e.g. a flaky network: longer)
    every = float(os.environ.get("DDIFF_API_PROBE_S", WATCH_EVERY_S)) if every is None else every
    lost_after = float(os.environ.get("DDIFF_API_LOST_AFTER_S", WATCH_LOST_AFTER_S)) if lost_after is None else lost_after
    stop = threading.Event()

    def watch():
        import httpx

        down_since, why = None, ""
        while not stop.wait(every):
            try:
                httpx.get(url.rstrip("/") + "/health", timeout=min(5.0, every)).raise_for_status()
                down_since = None
            except Exception as exc:  # noqa: BLE001 - any failure to reach it counts
                why = type(exc).__name__
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since >= lost_after and not stop.is_set():
                    try:
                        what = describe()
                    except Exception:  # noqa: BLE001
                        what = "rerun the same command to resume (finished work is kept)"
                    os.write(2, (f"ddiff: error: lost the Prefect API at {url} ({why} for {lost_after:.0f} s: the "
                                 f"server stopped or is unreachable); {what}\n").encode())
                    os._exit(1)

    t = threading.Thread(target=watch, name="ddiff-api-watchdog", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
