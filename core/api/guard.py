"""Middleware: header limits, the API key (throttled), admission, then the body limit.

Pure ASGI, so every check runs before anything reads the body:
- at most MAX_HEADERS headers of at most MAX_HEADER_BYTES each (431); the server itself (h11,
  see core.api.server) refuses a header block above H11_MAX_HEADER_BYTES before it reaches us;
- the API key; a client sending wrong keys is slowed down and then locked (core.storage.throttle,
  kind api_client; 429 with Retry-After), checked before the key lookup once it has failed;
- at most MAX_IN_FLIGHT photo requests (verifications, searches) at once: the next gets 503 with
  Retry-After at once, its body unread, so a burst cannot pile bodies and decodes in memory;
- the body limit, judged on Content-Length before reading and on the bytes received, and a
  slow-client limit: each body chunk must come within BODY_CHUNK_TIMEOUT_S (408).
"""

from __future__ import annotations

import json
import logging

import anyio
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.api.errors import error_body
from core.api.keys import lookup_key, roles_for
from core.api.settings import (
    BODY_CHUNK_TIMEOUT_S,
    KEY_HEADER,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_PHOTO_BYTES,
    megabytes,
)
from core.api.state import AppState
from core.storage import throttle

log = logging.getLogger(__name__)


async def _send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    payload = json.dumps(body).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    for k, v in (headers or {}).items():
        raw.append((k.lower().encode(), str(v).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class _TooLarge(StarletteHTTPException):
    """Raised from receive(): FastAPI passes HTTPExceptions through its body reading unchanged."""

    def __init__(self, size: int, limit: int):
        super().__init__(413, too_large_body(size, limit)["message"])


class _SlowClient(StarletteHTTPException):
    def __init__(self):
        super().__init__(408, "The request body stalled.")


def _throttled(factory, client: str) -> throttle.Throttled | None:
    with factory() as session:
        try:
            throttle.check(session, throttle.API_CLIENT, client)
        except throttle.Throttled as exc:
            return exc
        finally:
            session.commit()  # a lock that ran out is audited
    return None


def _record_failure(factory, client: str) -> None:
    try:
        with factory() as session:
            throttle.record_failure(session, throttle.API_CLIENT, client, f"api-client:{client}"[:64])
            session.commit()
    except SQLAlchemyError as exc:  # the refusal stands; counting it is best effort
        log.warning("could not count a failed API key: %s", exc)


class GuardMiddleware:
    """API key and role for /v1/ paths, then the request body limit."""

    def __init__(self, app, state: AppState, max_body_bytes: int, max_in_flight: int):
        self.app, self.state, self.max_body_bytes = app, state, max_body_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # photo requests being served (the event loop is one thread: no lock)
        self._suspects: set[str] = set()  # clients that sent a wrong key lately (checked first)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw_headers = scope.get("headers", [])
        if len(raw_headers) > MAX_HEADERS or any(len(k) + len(v) > MAX_HEADER_BYTES for k, v in raw_headers):
            return await _send_json(
                send,
                431,
                error_body(
                    "headers_too_large",
                    f"At most {MAX_HEADERS} headers of at most {MAX_HEADER_BYTES // 1024} KB each.",
                ),
            )
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        path = scope.get("path", "")
        client = (scope.get("client") or ("unknown", 0))[0]
        if path.startswith("/v1/") or path == "/v1":
            if client in self._suspects:
                refused = await anyio.to_thread.run_sync(_throttled, self.state.factory, client)
                if refused is not None:
                    return await _send_json(
                        send,
                        429,
                        error_body("too_many_failures", str(refused)),
                        {"Retry-After": refused.retry_after},
                    )
            key = headers.get(KEY_HEADER.lower(), "").strip()
            if not key:
                return await _send_json(
                    send,
                    401,
                    error_body("missing_api_key", f"Send your API key in the {KEY_HEADER} header."),
                    {"WWW-Authenticate": KEY_HEADER},
                )
            try:
                caller = await anyio.to_thread.run_sync(lookup_key, self.state.factory, key)
            except SQLAlchemyError as exc:
                log.warning("API key lookup failed: %s", exc)
                return await _send_json(
                    send,
                    503,
                    error_body("database_unavailable", "The database cannot be reached; try again."),
                )
            if caller is None or caller == "revoked":
                self._suspects.add(client)
                await anyio.to_thread.run_sync(_record_failure, self.state.factory, client)
                message = "This API key has been revoked." if caller else "This API key is not valid."
                return await _send_json(
                    send, 401, error_body("invalid_api_key", message), {"WWW-Authenticate": KEY_HEADER}
                )
            roles = roles_for(scope["method"], path)
            if caller.role not in roles:
                return await _send_json(
                    send,
                    403,
                    error_body(
                        "forbidden",
                        f"The key {caller.name!r} has the role {caller.role!r}; this needs "
                        f"{' or '.join(repr(r) for r in roles)}.",
                    ),
                )
            scope.setdefault("state", {})["caller"] = caller

        heavy = scope["method"] == "POST" and path.startswith(("/v1/verifications", "/v1/search"))
        if heavy and self.in_flight >= self.max_in_flight:
            return await _send_json(
                send,
                503,
                error_body(
                    "busy",
                    f"{self.max_in_flight} photo requests are being served; retry in a few seconds.",
                ),
                {"Retry-After": 2},
            )
        if heavy:
            self.in_flight += 1
        try:
            await self._limited(scope, receive, send, headers)
        finally:
            if heavy:
                self.in_flight -= 1

    async def _limited(self, scope, receive, send, headers):
        limit = self.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_json(
                    send, 400, error_body("bad_request", "Content-Length is not a number.")
                )
            if int(length) > limit:
                return await _send_json(send, 413, too_large_body(int(length), limit))
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            try:
                with anyio.fail_after(BODY_CHUNK_TIMEOUT_S):
                    message = await receive()
            except TimeoutError:
                raise _SlowClient() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(received, limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await _send_json(send, 413, too_large_body(received, limit))
        except _SlowClient:
            if started:
                raise
            await _send_json(
                send,
                408,
                error_body("request_timeout", f"The request body stalled for {BODY_CHUNK_TIMEOUT_S:.0f} s."),
                {"Connection": "close"},
            )


def too_large_body(size: int, limit: int) -> dict:
    return error_body(
        "request_too_large",
        f"The request body is {megabytes(size)} MB or more; the limit is {megabytes(limit)} MB per request "
        f"(and {megabytes(MAX_PHOTO_BYTES)} MB per photo).",
    )
