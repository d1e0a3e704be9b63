"""Serving the API with limits the HTTP layer itself enforces, before the application sees a byte.

serve(app, host, port, log_level) runs uvicorn with:
- the h11 parser (not httptools, which has no header size limit: a 100 MB X-API-Key header was
  read whole, 44 s, before any check), capped at H11_MAX_HEADER_BYTES for the request line and
  headers together (431 above);
- HEADER_TIMEOUT_S for a new connection to deliver its first request line and headers (a client
  trickling headers is cut off; between requests uvicorn's keep-alive timeout does the same);
- at most MAX_CONNECTIONS connections and requests at once (503 above);
- X-Forwarded-For / X-Forwarded-Proto believed only from the proxies named by TRUSTED_PROXIES
  (default: nobody; core.storage.client_address), never from any local client.
The body's size and pace are checked by core.api.guard.
"""

from __future__ import annotations

import os

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from core import config
from core.api.settings import H11_MAX_HEADER_BYTES, HEADER_TIMEOUT_S
from core.storage.client_address import uvicorn_proxy_options

MAX_CONNECTIONS = 256
KEEP_ALIVE_S = 5


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the first request's headers."""

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # no complete request line and headers yet

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def limits() -> dict:
    """uvicorn's keyword arguments for the limits above (uvicorn.run and uvicorn.Config alike)."""
    return {
        "http": LimitedH11Protocol,
        "h11_max_incomplete_event_size": H11_MAX_HEADER_BYTES,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "limit_concurrency": MAX_CONNECTIONS,
        "timeout_graceful_shutdown": 10,
        **uvicorn_proxy_options(),
    }


def uvicorn_config(app, host: str, port: int, log_level: str = "info"):
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, **limits())


def size_decode_budget():
    """The decoder's share of an API process's memory: API_DECODE_MEMORY_MB (default DECODE_MB)
    unless DECODE_MEMORY_MB is given. With the admission gate (core.api.guard) and the models,
    the process stays under its limit however many photos arrive at once."""
    from core.verification import decode_memory

    mb = config.get("API_DECODE_MEMORY_MB")
    return decode_memory.use_decode_budget(int(mb * 1024 * 1024))


def serve(app, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    size_decode_budget()
    uvicorn.Server(uvicorn_config(app, host, port, log_level)).run()


THREAD_SETTINGS = (
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_NUM_THREADS",
    "OPENCV_FOR_THREADS_NUM",
)


def share_cores(workers: int) -> int:
    """Threads per network library in each of `workers` API processes: cores // workers (at least 1).

    Each library (TensorFlow, OpenMP, OpenCV) otherwise starts a thread per core in every process,
    and N processes x cores threads fight over the cores. Settings already given are kept.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // max(1, workers))
    for name in THREAD_SETTINGS:
        os.environ.setdefault(name, str(threads))
    return threads


def serve_workers(
    workers: int, host: str, port: int, log_level: str, *, database_url: str | None, max_body_bytes: int
) -> None:
    """`workers` API processes sharing the port, each building its app from the settings (which
    get the database URL and body limit given here) and using its share of the cores."""
    import uvicorn

    share_cores(workers)
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    os.environ["API_MAX_BODY_BYTES"] = str(max_body_bytes)
    uvicorn.run(
        "core.api.app:app_from_settings",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level=log_level,
        **limits(),
    )
