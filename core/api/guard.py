"""Middleware: header limits, the API key (throttled), admission, then the body limit.

Pure ASGI, so every check runs before anything reads the body:
- at most MAX_HEADERS headers of at most MAX_HEADER_BYTES each (431); the server itself (h11,
  see core.api.server) refuses a header block above H11_MAX_HEADER_BYTES before it reaches us;
- the API key. A valid key is always let through: failures of other keys never throttle it.
  A wrong key is counted against the key prefix it presented and against the client's address
  (core.storage.throttle, kinds api_key_prefix and api_client); while either waits or is locked,
  wrong keys get 429 with Retry-After. The address is the socket's peer, or what a trusted proxy
  forwarded (uvicorn's proxy headers, only from TRUSTED_PROXIES; see core.api.server);
- one admission gate for every request that decodes photos (photo_request(): verifications,
  searches, photo checks, gallery photos, enrolment): at most max_in_flight at once, and their
  bodies together at most admission_bytes (each counts its Content-Length times the copies it
  makes; one without a length counts the largest body allowed). The next gets 503 with
  Retry-After at once, its body unread, so a burst cannot pile bodies and decodes in memory.
  With the decode budget (core.verification.imaging, sized by core.api.server) this keeps the
  process under its memory limit at any concurrency;
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
    ADMISSION_MB,
    BODY_CHUNK_TIMEOUT_S,
    JSON_BODY_COPIES,
    KEY_HEADER,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_PHOTO_BYTES,
    UPLOAD_BODY_COPIES,
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


def key_prefix(key: str) -> str:
    """The part of a presented key that is counted when it fails (what `list-keys` shows)."""
    return key[:12]


def _failure_subjects(client: str, key: str) -> list[tuple[str, str]]:
    return [(throttle.API_KEY_PREFIX, key_prefix(key)), (throttle.API_CLIENT, client)]


def _throttled(factory, subjects: list[tuple[str, str]]) -> throttle.Throttled | None:
    with factory() as session:
        try:
            for kind, subject in subjects:
                throttle.check(session, kind, subject)
        except throttle.Throttled as exc:
            return exc
        finally:
            session.commit()  # a lock that ran out is audited
    return None


def _record_failure(factory, subjects: list[tuple[str, str]], client: str) -> None:
    try:
        with factory() as session:
            for kind, subject in subjects:
                throttle.record_failure(session, kind, subject, f"api-client:{client}"[:64])
            session.commit()
    except SQLAlchemyError as exc:  # the refusal stands; counting it is best effort
        log.warning("could not count a failed API key: %s", exc)


# Paths under /v1/ that take a body but decode no photo; every other POST or PUT does.
_NO_PHOTO_PATHS = ("/v1/challenges",)


def admission_cost(headers: dict, max_body_bytes: int) -> int:
    """Bytes a photo request will hold while it is served, judged before its body is read."""
    length = headers.get("content-length", "")
    size = int(length) if length.isdigit() else max_body_bytes
    size = min(size, max_body_bytes)  # above it the body limit answers 413 before reading
    multipart = headers.get("content-type", "").lower().startswith("multipart/")
    return int(size * (UPLOAD_BODY_COPIES if multipart else JSON_BODY_COPIES))


def photo_request(method: str, path: str) -> bool:
    """Whether a request may decode photos, and so goes through the admission gate."""
    if method not in ("POST", "PUT", "PATCH") or not path.startswith("/v1/"):
        return False
    return not path.startswith(_NO_PHOTO_PATHS)


class GuardMiddleware:
    """API key and role for /v1/ paths, then the request body limit."""

    def __init__(
        self,
        app,
        state: AppState,
        max_body_bytes: int,
        max_in_flight: int,
        admission_bytes: int = int(ADMISSION_MB * 1024 * 1024),
    ):
        self.app, self.state, self.max_body_bytes = app, state, max_body_bytes
        self.max_in_flight, self.admission_bytes = max_in_flight, admission_bytes
        # Photo requests being served and the bytes they hold (the event loop is one thread: no lock).
        self.in_flight = 0
        self.admitted_bytes = 0

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
                # Only wrong keys are throttled, by their own prefix and address: a valid key
                # is never refused because someone else keeps sending wrong ones.
                subjects = _failure_subjects(client, key)
                refused = await anyio.to_thread.run_sync(_throttled, self.state.factory, subjects)
                if refused is not None:
                    return await _send_json(
                        send,
                        429,
                        error_body("too_many_failures", str(refused)),
                        {"Retry-After": refused.retry_after},
                    )
                await anyio.to_thread.run_sync(_record_failure, self.state.factory, subjects, client)
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

        heavy = photo_request(scope["method"], path)
        cost = admission_cost(headers, self.max_body_bytes) if heavy else 0
        # One request alone is always admitted: the body limit keeps its cost under the budget.
        if heavy and (
            self.in_flight >= self.max_in_flight
            or (self.in_flight and self.admitted_bytes + cost > self.admission_bytes)
        ):
            return await _send_json(
                send,
                503,
                error_body(
                    "busy",
                    f"{self.in_flight} photo requests are being served; retry in a few seconds.",
                ),
                {"Retry-After": 2},
            )
        if heavy:
            self.in_flight += 1
            self.admitted_bytes += cost
        try:
            await self._limited(scope, receive, send, headers)
        finally:
            if heavy:
                self.in_flight -= 1
                self.admitted_bytes -= cost

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
