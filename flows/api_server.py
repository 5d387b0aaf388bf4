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

__all__ = ["command_server"]

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
        server.stop()
