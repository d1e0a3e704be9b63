"""Service API for the dating app's backend: verifications, their status and history, search by photo.

The same core path as the dashboard: photos are checked with core.verification.imaging, analysed and compared by
core.verification.engine, and stored as a batch of one item with core.workflows.batches.store_result, which runs the 1:N
duplicate check (core.workflows.search.flag_possible_duplicates). Flagged results wait in the dashboard's
review queue like any other.

    create_app(session_factory=None, engine=None, *, photo_store=None, ...) -> FastAPI

Endpoints (JSON in and out; the description is at /openapi.json):
    GET  /health                                   no key; model version, database, enrolled members
    POST /v1/verifications                         JSON: photos as base64 or stored sha256 references
    POST /v1/verifications/upload                  multipart/form-data: photos as files
    GET  /v1/verifications/{id}                    one stored result, with its review state
    GET  /v1/members/{member_id}/verifications     a member's results, newest first
    POST /v1/search                                search by photo (JSON, base64 or stored sha256)
    POST /v1/search/upload                         search by photo (multipart)

API keys, sent as the X-API-Key header. Only the key's sha256 is stored (api_keys table): a key is
32 random bytes, so a fast hash is as safe as a slow one and lets the lookup use an index.
    backend  submit verifications, search, read
    reader   read verifications and histories
The key is checked before the request body is read, so an unauthenticated client cannot make the
server read (or parse) a large upload.

Limits: a request body of at most MAX_BODY_BYTES (30 MB; 413 above, judged on Content-Length
before reading and on the bytes actually received), each photo at most 25 MB and 100 megapixels
(core.verification.imaging; 413), at most MAX_QUEUE verifications waiting for the engine (503 with Retry-After).

Errors are JSON: {"error": code, "message": sentence, "details": [...]} with the status code
    400 malformed JSON or multipart body     401 missing, unknown or revoked key
    403 the key's role may not do this        404 unknown member, result or stored photo
    413 body or photo too large               415 not an image, or the wrong content type
    422 the request is well-formed but unusable (missing photo, bad gender, corrupt image, no face
        in a photo to search)                 503 model not loaded yet, engine queue full, database down
Nothing is stored for a request that fails: the member, photos, batch, result, possible duplicates
and audit entry of a verification are written in one transaction (photo files go into the
content-addressed photo store first, where an unreferenced file is harmless).

Command line:
    python -m core.api --port PORT [--host 127.0.0.1] [--url DATABASE_URL]    serve
    python -m core.api create-key --name NAME --role backend|reader        prints the key once
    python -m core.api list-keys | revoke-key --name NAME
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import sys
import threading
import time
import unicodedata
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, File, Form, Path, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import FaceVerifyError, ImageError, ModelError
from core.storage import audit
from core.storage.photostore import PhotoNotFound, PhotoStore
from core.storage.schema import (
    BATCH_COMPLETED,
    GALLERY,
    MEMBER_IN_REVIEW,
    MEMBER_PENDING,
    VERIFICATION,
    ApiKey,
    Batch,
    BatchItem,
    Member,
    Photo,
    PossibleDuplicate,
    Review,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification import imaging
from core.verification.imaging import DEFAULT_MAX_BYTES, decode_image
from core.verification.result import FLAGGED
from core.workflows import batches, search
from core.workflows.importer import normalise_gender

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
MAX_BODY_BYTES = 30 * 1024 * 1024
MAX_PHOTO_BYTES = DEFAULT_MAX_BYTES  # 25 MB, core.verification.imaging's limit
MAX_BASE64_CHARS = (MAX_BODY_BYTES * 4) // 3 + 4
MAX_QUEUE = 64  # verifications waiting for the engine before new ones get 503
ENGINE_BATCH = 8  # requests whose photos go through the network together
ENGINE_TIMEOUT_S = 120.0  # a request never waits longer than this for the engine
STORE_CONCURRENCY = 4  # transactions at once (each may also use a second connection to sync the index)
KEY_HEADER = "X-API-Key"
KEY_PREFIX = "fvk_"
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per key

BACKEND, READER = "backend", "reader"
API_ROLES = (BACKEND, READER)
CREATE_API_KEY, REVOKE_API_KEY, API_VERIFY, API_SEARCH = (
    "create_api_key",
    "revoke_api_key",
    "api_verify",
    "api_search",
)
SHA256_PATTERN = r"^[0-9a-f]{64}$"
_SHA_RE = re.compile(SHA256_PATTERN)


# ----------------------------------------------------------------------------------------------
# Errors


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = (
            status,
            code,
            message,
            details,
            headers,
        )


def _error_body(code: str, message: str, details: list | None = None) -> dict:
    body: dict[str, Any] = {"error": code, "message": message}
    if details:
        body["details"] = details
    return body


def _error_response(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    return JSONResponse(_error_body(code, message, details), status_code=status, headers=headers)


_IMAGE_STATUS = {"too_large": 413, "too_many_pixels": 413, "not_an_image": 415}


def _image_error(which: str, exc: ImageError) -> ApiError:
    status = _IMAGE_STATUS.get(exc.code, 422)
    return ApiError(status, exc.code, f"The {which} photo cannot be used: {exc}")


# ----------------------------------------------------------------------------------------------
# API keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, name: str, role: str, actor: str = "cli") -> tuple[str, ApiKey]:
    """A new key: returns (the key itself, shown once; its row, which holds only the hash). Commits."""
    name = (name or "").strip()
    if not name or len(name) > 128:
        raise ValueError("A key needs a name of 1 to 128 characters.")
    if role not in API_ROLES:
        raise ValueError(f"Unknown role {role!r}; use one of {', '.join(API_ROLES)}.")
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))):
        raise ValueError(f"An active key named {name!r} exists; revoke it first or pick another name.")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        key_hash=hash_key(key),
        key_prefix=key[:12],
        name=name,
        role=role,
        created_at=utcnow(),
        created_by=actor,
    )
    session.add(row)
    audit.log(session, actor, CREATE_API_KEY, "api_key", name, {"role": role, "prefix": key[:12]})
    session.commit()
    return key, row


def revoke_key(session: Session, name: str, actor: str = "cli") -> int:
    now = utcnow()
    n = session.execute(
        update(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)).values(revoked_at=now)
    ).rowcount
    if n:
        audit.log(session, actor, REVOKE_API_KEY, "api_key", name)
    session.commit()
    return n


@dataclass(frozen=True)
class Caller:
    key_id: int
    name: str
    role: str

    @property
    def actor(self) -> str:
        return f"api:{self.name}"[:64]


def _lookup_key(factory: sessionmaker, key: str) -> Caller | None | str:
    """The caller for a key; None when unknown; "revoked" when revoked."""
    with factory() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
        if row is None:
            return None
        if row.revoked_at is not None:
            return "revoked"
        now = utcnow()
        if row.last_used_at is None or row.last_used_at < now - LAST_USED_EVERY:
            session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
            session.commit()
        return Caller(row.id, row.name, row.role)


# Which roles may call what: (method, path prefix) -> roles. First match wins.
_PERMISSIONS = (
    ("POST", "/v1/verifications", (BACKEND,)),
    ("POST", "/v1/search", (BACKEND,)),
    ("GET", "/v1/", (BACKEND, READER)),
)


def _roles_for(method: str, path: str) -> tuple[str, ...]:
    for m, prefix, roles in _PERMISSIONS:
        if method == m and path.startswith(prefix):
            return roles
    return (BACKEND,)


# ----------------------------------------------------------------------------------------------
# Middleware: key first, then the body limit (pure ASGI, before anything reads the body)


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
        super().__init__(413, _too_large_body(size, limit)["message"])


class GuardMiddleware:
    """API key and role for /v1/ paths, then the request body limit."""

    def __init__(self, app, state: _State, max_body_bytes: int):
        self.app, self.state, self.max_body_bytes = app, state, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if path.startswith("/v1/") or path == "/v1":
            key = headers.get(KEY_HEADER.lower(), "").strip()
            if not key:
                return await _send_json(
                    send,
                    401,
                    _error_body("missing_api_key", f"Send your API key in the {KEY_HEADER} header."),
                    {"WWW-Authenticate": KEY_HEADER},
                )
            try:
                caller = await anyio.to_thread.run_sync(_lookup_key, self.state.factory, key)
            except SQLAlchemyError as exc:
                log.warning("API key lookup failed: %s", exc)
                return await _send_json(
                    send,
                    503,
                    _error_body("database_unavailable", "The database cannot be reached; try again."),
                )
            if caller is None or caller == "revoked":
                message = "This API key has been revoked." if caller else "This API key is not valid."
                return await _send_json(
                    send, 401, _error_body("invalid_api_key", message), {"WWW-Authenticate": KEY_HEADER}
                )
            roles = _roles_for(scope["method"], path)
            if caller.role not in roles:
                return await _send_json(
                    send,
                    403,
                    _error_body(
                        "forbidden",
                        f"The key {caller.name!r} has the role {caller.role!r}; this needs "
                        f"{' or '.join(repr(r) for r in roles)}.",
                    ),
                )
            scope.setdefault("state", {})["caller"] = caller

        limit = self.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_json(
                    send, 400, _error_body("bad_request", "Content-Length is not a number.")
                )
            if int(length) > limit:
                return await _send_json(send, 413, _too_large_body(int(length), limit))
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
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
            await _send_json(send, 413, _too_large_body(received, limit))


def _mb(n: int) -> str:
    """Bytes in MB as people count them for upload limits (1 MB = 1024 * 1024 bytes)."""
    return f"{n / (1024 * 1024):.1f}".removesuffix(".0")


def _too_large_body(size: int, limit: int) -> dict:
    return _error_body(
        "request_too_large",
        f"The request body is {_mb(size)} MB or more; the limit is {_mb(limit)} MB per request "
        f"(and {_mb(MAX_PHOTO_BYTES)} MB per photo).",
    )


# ----------------------------------------------------------------------------------------------
# The engine worker: one thread runs the engine; concurrent requests share its network calls


@dataclass
class _Job:
    photos: list[bytes]
    gender: str | None = None
    pair: bool = True
    submitted: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


class EngineWorker:
    """Runs analyze_many + compare for queued requests, up to ENGINE_BATCH requests per network call.

    This is Engine.verify() (analyze both photos, then compare) with the photos of requests that
    arrive together analysed in one call; results are the same as one by one.
    """

    def __init__(self, engine, max_queue: int = MAX_QUEUE):
        self.engine = engine
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._max_queue = max_queue
        self._thread = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._thread.start()

    def submit(self, job: _Job) -> Future:
        if self._queue.qsize() >= self._max_queue:
            raise ApiError(
                503,
                "busy",
                f"{self._max_queue} verifications are already waiting for the engine; retry in a few seconds.",
                headers={"Retry-After": "2"},
            )
        self._queue.put(job)
        return job.future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < ENGINE_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this round
                    break
                jobs.append(nxt)
            try:
                self._process(jobs)
            except BaseException as exc:  # the engine failed: every waiting request hears it
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)

    def _process(self, jobs: list[_Job]) -> None:
        distinct: dict[str, bytes] = {}
        for job in jobs:
            for data in job.photos:
                distinct.setdefault(hashlib.sha256(data).hexdigest(), data)
        analyses = dict(zip(distinct, self.engine.analyze_many(list(distinct.values())), strict=True))
        for job in jobs:
            shas = [hashlib.sha256(d).hexdigest() for d in job.photos]
            if job.pair:
                result = self.engine.compare(analyses[shas[0]], analyses[shas[1]], job.gender)
                wall = (time.perf_counter() - job.submitted) * 1000
                result.timings_ms["queue"] = max(
                    0.0, wall - sum(v for k, v in result.timings_ms.items() if k != "total")
                )
                result.timings_ms["total"] = wall  # what the caller waited, as Engine.verify reports it
                job.future.set_result(result)
            else:
                job.future.set_result(analyses[shas[0]])


# ----------------------------------------------------------------------------------------------
# Application state


@dataclass
class _State:
    factory: sessionmaker
    store: PhotoStore
    engine: Any = None
    worker: EngineWorker | None = None
    model_error: str | None = None
    loading: bool = False
    store_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(STORE_CONCURRENCY)
    )

    def set_engine(self, engine) -> None:
        search.register_engine(engine)
        self.engine = engine
        self.worker = EngineWorker(engine)
        self.model_error = None
        try:  # build the duplicate index now rather than on the first request
            search.index_for(self.factory.kw["bind"], engine.model_version)
        except (SQLAlchemyError, ModelError) as exc:
            log.warning("search index not built at start: %s", exc)

    def require_engine(self) -> EngineWorker:
        if self.worker is None:
            if self.loading:
                raise ApiError(
                    503,
                    "model_loading",
                    "The model is still loading; retry in a few seconds.",
                    headers={"Retry-After": "5"},
                )
            raise ApiError(
                503, "model_unavailable", f"No model is loaded: {self.model_error or 'unknown reason'}"
            )
        return self.worker


def _load_engine_in_background(state: _State) -> None:
    state.loading = True

    def load():
        try:
            from core.training import registry
            from core.verification.engine import Engine

            # The registry's active version (models/DEFAULT until a promotion): a promotion on the
            # Retrain page takes effect in the API at its next start.
            state.set_engine(Engine.load(registry.current_version(state.factory)))
        except (ModelError, OSError, ValueError, SQLAlchemyError) as exc:
            state.model_error = str(exc)
            log.error("model not loaded: %s", exc)
        finally:
            state.loading = False

    threading.Thread(target=load, name="engine-load", daemon=True).start()


# ----------------------------------------------------------------------------------------------
# Schemas


class ErrorOut(BaseModel):
    error: str = Field(
        description="machine-readable code, e.g. invalid_api_key, unknown_member, not_an_image"
    )
    message: str = Field(description="what went wrong and what to do, in one or two sentences")
    details: list[Any] | None = None


class FaceOut(BaseModel):
    box: list[float] = Field(description="x, y, width, height in pixels of the (EXIF-rotated) photo")
    score: float
    keypoints: list[list[float]] = []


class PhotoOut(BaseModel):
    sha256: str
    width: int
    height: int
    faces: list[FaceOut] = []
    main_face: int | None = None
    quality: float | None = None
    error: str | None = None
    timings_ms: dict[str, float] = {}


class FlagOut(BaseModel):
    code: str = Field(
        description="no_face, several_faces, low_quality, bad_image, uncertain_similarity, "
        "gender_mismatch, uncertain_gender or possible_duplicate"
    )
    reason: str
    photo: str | None = Field(None, description="gallery, verification, or null for the pair")


class DuplicateOut(BaseModel):
    member_id: str
    similarity: float


class ReviewOut(BaseModel):
    decision: str
    reviewer: str
    decided_at: datetime
    same_person: bool | None = None
    true_gender: str | None = None


class VerificationOut(BaseModel):
    id: int
    member_id: str | None
    batch_id: int | None
    source: str | None = Field(None, description="api, verify_page, page, import ... (who asked)")
    created_at: datetime
    status: str = Field(
        description="auto_approved, auto_rejected, flagged (waits for a reviewer), approved, rejected"
    )
    decided_at: datetime | None = None
    decided_by: str | None = None
    review: ReviewOut | None = None
    same_person: bool | None
    similarity: float | None
    threshold: float
    uncertain_band: list[float]
    predicted_gender: str | None
    gender_confidence: float | None
    registered_gender: str | None
    flags: list[FlagOut]
    possible_duplicates: list[DuplicateOut] = Field(
        description="other members whose enrolled face is at or above the duplicate threshold"
    )
    gallery_photo_sha256: str | None = None
    verification_photo_sha256: str | None = None
    gallery: PhotoOut | None = None
    verification: PhotoOut | None = None
    timings_ms: dict[str, float] | None = None
    latency_ms: float | None = None
    model_version: str


class VerificationSummary(BaseModel):
    id: int
    created_at: datetime
    status: str
    same_person: bool | None
    similarity: float | None
    flags: list[str]
    possible_duplicate: bool
    decided_at: datetime | None = None
    decided_by: str | None = None
    batch_id: int | None
    source: str | None = None
    model_version: str


class MemberHistoryOut(BaseModel):
    member_id: str
    gender: str
    status: str
    total: int
    limit: int
    offset: int
    items: list[VerificationSummary]


class CandidateOut(BaseModel):
    member_id: str
    similarity: float
    possible_duplicate: bool = Field(description="at or above the duplicate threshold")


class SearchOut(BaseModel):
    model_version: str
    duplicate_threshold: float
    enrolled: int = Field(description="enrolled gallery photos searched")
    search_ms: float
    face: PhotoOut
    candidates: list[CandidateOut]


class HealthOut(BaseModel):
    status: str = Field(description="ok, starting or degraded")
    model_loaded: bool
    model_version: str | None = None
    model_error: str | None = None
    database: str
    enrolled: int | None = None
    duplicate_threshold: float | None = None
    api_version: str


MemberId = Annotated[
    str,
    Field(min_length=1, max_length=64, description="the app's member ID (1-64 visible characters)"),
]


class VerificationRequest(BaseModel):
    """Photos not given are the member's current stored ones."""

    model_config = ConfigDict(extra="forbid")

    member_id: MemberId
    registered_gender: str | None = Field(
        None,
        max_length=16,
        description="M or F (male/female, 남/여 ...); default: the member's stored gender",
    )
    enrol: bool = Field(
        False,
        description="true: create the member when the ID is unknown (needs registered_gender and both photos)",
    )
    gallery_base64: str | None = Field(None, max_length=MAX_BASE64_CHARS, description="gallery photo, base64")
    gallery_sha256: str | None = Field(
        None, pattern=SHA256_PATTERN, description="a stored photo of this member, by content hash"
    )
    verification_base64: str | None = Field(None, max_length=MAX_BASE64_CHARS, description="selfie, base64")
    verification_sha256: str | None = Field(None, pattern=SHA256_PATTERN)

    @model_validator(mode="after")
    def _one_source_per_photo(self):
        for which in ("gallery", "verification"):
            if getattr(self, f"{which}_base64") is not None and getattr(self, f"{which}_sha256") is not None:
                raise ValueError(f"give {which}_base64 or {which}_sha256, not both")
        return self


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    photo_base64: str | None = Field(None, max_length=MAX_BASE64_CHARS)
    photo_sha256: str | None = Field(
        None, pattern=SHA256_PATTERN, description="a stored photo, by content hash"
    )
    k: int = Field(10, ge=1, le=50, description="how many members to return")
    exclude_member: str | None = Field(None, max_length=64, description="leave this member out")

    @model_validator(mode="after")
    def _exactly_one_photo(self):
        if (self.photo_base64 is None) == (self.photo_sha256 is None):
            raise ValueError("give exactly one of photo_base64 and photo_sha256")
        return self


ERRORS = {
    400: {"model": ErrorOut, "description": "malformed JSON or multipart body"},
    401: {"model": ErrorOut, "description": "missing, unknown or revoked API key"},
    403: {"model": ErrorOut, "description": "the key's role may not do this"},
    404: {"model": ErrorOut, "description": "unknown member, result or stored photo"},
    413: {"model": ErrorOut, "description": "request or photo too large"},
    415: {"model": ErrorOut, "description": "not an image, or the wrong content type"},
    422: {"model": ErrorOut, "description": "well-formed but unusable request"},
    503: {"model": ErrorOut, "description": "model loading, engine busy or database unavailable"},
}


def _errors(*codes: int) -> dict:
    return {code: ERRORS[code] for code in codes}


# ----------------------------------------------------------------------------------------------
# Input


@dataclass
class _PhotoIn:
    which: str  # gallery / verification
    data: bytes | None = None  # uploaded bytes
    sha256: str | None = None  # reference to a stored photo
    ext: str = "jpg"
    width: int | None = None
    height: int | None = None


def _member_id(raw: str) -> str:
    member_id = unicodedata.normalize("NFC", raw or "").strip()
    if not member_id or len(member_id) > 64 or any(not ch.isprintable() for ch in member_id):
        raise ApiError(
            422, "bad_member_id", "member_id must be 1 to 64 visible characters (no tabs or line breaks)."
        )
    return member_id


def _gender(raw: str | None) -> str | None:
    if raw is None or str(raw).strip() == "":
        return None
    try:
        return normalise_gender(raw)
    except ValueError as exc:
        raise ApiError(422, "bad_gender", f"registered_gender: {exc}.") from None


def _checked_photo(which: str, data: bytes) -> _PhotoIn:
    if not data:
        raise ApiError(422, "empty", f"The {which} photo is empty (0 bytes).")
    try:
        decoded = decode_image(data, max_bytes=MAX_PHOTO_BYTES)
    except ImageError as exc:
        raise _image_error(which, exc) from None
    width, height = decoded.original_size
    return _PhotoIn(
        which, data=data, ext=imaging.FILE_EXTENSIONS.get(decoded.format, "jpg"), width=width, height=height
    )


def _b64(which: str, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "bad_base64", f"{which}_base64 is not valid base64.") from None


def _upload_bytes(which: str, upload: UploadFile | None) -> bytes | None:
    if upload is None:
        return None
    data = upload.file.read(MAX_PHOTO_BYTES + 1)
    if len(data) > MAX_PHOTO_BYTES:
        raise ApiError(413, "too_large", f"The {which} photo is larger than {_mb(MAX_PHOTO_BYTES)} MB.")
    return data


# ----------------------------------------------------------------------------------------------
# Verification: resolve, run, store


@dataclass
class _Resolved:
    member_exists: bool
    gender: str | None
    photos: dict[str, _PhotoIn]
    stored: dict[str, tuple[int, str, str]]  # kind -> (photo id, sha256, stored path) for references
    data: dict[str, bytes]


def _resolve(
    state: _State, member_id: str, gender: str | None, enrol: bool, photos: dict[str, _PhotoIn]
) -> _Resolved:
    with state.factory() as session:
        member = session.get(Member, member_id)
        if member is None:
            if not enrol:
                raise ApiError(
                    404,
                    "unknown_member",
                    f"There is no member {member_id!r}. To enrol a new member, send enrol=true with "
                    "registered_gender and both photos.",
                )
            problems = []
            if gender is None:
                problems.append("registered_gender")
            problems += [f"{w} photo (uploaded)" for w in (GALLERY, VERIFICATION) if photos[w].data is None]
            if problems:
                raise ApiError(422, "enrol_incomplete", f"A new member needs {', '.join(problems)}.")
        effective_gender = gender or (member.gender if member else None)
        stored: dict[str, tuple[int, str, str]] = {}
        data: dict[str, bytes] = {}
        for which in (GALLERY, VERIFICATION):
            photo = photos[which]
            if photo.data is not None:
                data[which] = photo.data
                continue
            if photo.sha256 is not None:
                row = session.scalar(
                    select(Photo)
                    .where(Photo.member_id == member_id, Photo.sha256 == photo.sha256)
                    .order_by(Photo.current.desc(), Photo.id.desc())
                )
                if row is None:
                    raise ApiError(
                        404,
                        "unknown_photo",
                        f"Member {member_id!r} has no stored photo {photo.sha256[:12]}….",
                    )
            else:
                row = session.scalar(
                    select(Photo)
                    .where(Photo.member_id == member_id, Photo.kind == which, Photo.current.is_(True))
                    .order_by(Photo.id.desc())
                )
                if row is None:
                    raise ApiError(
                        422,
                        "photo_required",
                        f"Member {member_id!r} has no stored {which} photo; upload one.",
                    )
            try:
                data[which] = state.store.read(row.stored_path)
            except PhotoNotFound as exc:
                raise ApiError(404, "photo_missing", str(exc)) from None
            stored[which] = (row.id, row.sha256, row.stored_path)
        session.rollback()
    return _Resolved(member is not None, effective_gender, photos, stored, data)


def _attach_photo(
    session: Session, member_id: str, photo: _PhotoIn, stored_path: str, now
) -> tuple[Photo, bool]:
    """Make the uploaded photo the member's current one of its kind (importer semantics)."""
    sha = hashlib.sha256(photo.data).hexdigest()
    current = session.scalars(
        select(Photo).where(Photo.member_id == member_id, Photo.kind == photo.which, Photo.current.is_(True))
    ).all()
    if any(p.sha256 == sha for p in current):
        return next(p for p in current if p.sha256 == sha), False
    for p in current:
        p.current = False
    again = session.scalar(
        select(Photo).where(Photo.member_id == member_id, Photo.kind == photo.which, Photo.sha256 == sha)
    )
    if again is not None:
        again.current = True
        return again, True
    row = Photo(
        member_id=member_id,
        kind=photo.which,
        sha256=sha,
        stored_path=stored_path,
        size_bytes=len(photo.data),
        source="api",
        current=True,
        created_at=now,
        width=photo.width,
        height=photo.height,
    )
    session.add(row)
    return row, True


def _store_verification(
    state: _State, caller: Caller, member_id: str, resolved: _Resolved, result, paths: dict[str, str]
) -> int:
    """Member, photos, batch of one, result, duplicates and audit: one transaction. Returns the result id."""
    with state.factory() as session:
        now = utcnow()
        member = session.get(Member, member_id)
        changes: list[str] = []
        if member is None:
            member = Member(
                id=member_id, gender=resolved.gender, created_at=now, updated_at=now, source="api"
            )
            session.add(member)
            changes.append("new member")
        elif resolved.gender and member.gender != resolved.gender:
            changes.append(f"gender {member.gender} → {resolved.gender}")
            member.gender = resolved.gender
        photo_ids: dict[str, int] = {}
        for which in (GALLERY, VERIFICATION):
            if which in resolved.stored:
                photo_ids[which] = resolved.stored[which][0]
                continue
            row, changed = _attach_photo(session, member_id, resolved.photos[which], paths[which], now)
            if changed:
                changes.append(f"new {which} photo")
            session.flush()
            photo_ids[which] = row.id
        if changes:
            member.updated_at = now
            member.source = "api"
            member.status = MEMBER_PENDING  # new photos: the earlier verification no longer speaks for them
            audit.log(
                session,
                caller.actor,
                audit.IMPORT_MEMBER,
                "member",
                member_id,
                {"source": "api", "changes": changes},
            )

        batch = Batch(
            name=f"{member_id} (api)"[:200],
            source="api",
            created_by=caller.actor,
            created_at=now,
            model_version=result.model_version,
            status=BATCH_COMPLETED,
            n_items=1,
            started_at=now,
            finished_at=now,
            heartbeat_at=now,
        )
        session.add(batch)
        session.flush()
        item = BatchItem(
            batch_id=batch.id,
            position=0,
            member_id=member_id,
            gallery_photo_id=photo_ids[GALLERY],
            verification_photo_id=photo_ids[VERIFICATION],
            registered_gender=resolved.gender,
        )
        session.add(item)
        session.flush()
        row = batches.store_result(
            session,
            result,
            batch_id=batch.id,
            batch_item_id=item.id,
            member_id=member_id,
            gallery_photo_id=photo_ids[GALLERY],
            verification_photo_id=photo_ids[VERIFICATION],
            latency_ms=result.timings_ms.get("total"),
        )
        if not search.was_checked(row):
            # core.workflows.batches.store_result does not call the duplicate hook (yet): call it here.
            search.flag_possible_duplicates(session, row, result)
            if row.status == FLAGGED:
                session.execute(update(Member).where(Member.id == member_id).values(status=MEMBER_IN_REVIEW))
        session.flush()
        audit.log(
            session,
            caller.actor,
            API_VERIFY,
            "result",
            row.id,
            {"member_id": member_id, "status": row.status, "batch_id": batch.id},
        )
        session.commit()
        return row.id


def _verify(
    state: _State, caller: Caller, member_id: str, gender: str | None, enrol: bool, photos: dict
) -> dict:
    worker = state.require_engine()
    member_id = _member_id(member_id)
    gender = _gender(gender)
    resolved = _resolve(state, member_id, gender, enrol, photos)
    # Files first (idempotent, content-addressed); the database rows come in one transaction after.
    paths = {}
    for which, photo in photos.items():
        if photo.data is not None:
            try:
                paths[which] = state.store.put(photo.data, photo.ext).relative_path
            except OSError as exc:
                raise ApiError(
                    503, "photo_store_unavailable", f"The photo store cannot save the photo: {exc}"
                ) from None
    future = worker.submit(_Job([resolved.data[GALLERY], resolved.data[VERIFICATION]], resolved.gender))
    result = future.result(timeout=ENGINE_TIMEOUT_S)
    with state.store_slots:
        for attempt in (1, 2, 3):
            try:
                result_id = _store_verification(state, caller, member_id, resolved, result, paths)
                break
            except IntegrityError as exc:
                # Another request changed the same member at the same moment: try again once more.
                if attempt == 3:
                    raise ApiError(
                        409, "conflict", "The member was changed by another request at the same time; retry."
                    ) from exc
            except OperationalError as exc:
                if attempt == 3 or not _is_retryable(exc):
                    raise
                time.sleep(0.05 * attempt)
        with state.factory() as session:
            return _result_out(session, session.get(ResultRow, result_id))


def _is_retryable(exc: OperationalError) -> bool:
    text_ = str(getattr(exc, "orig", exc)).lower()
    return "deadlock" in text_ or "lock wait timeout" in text_ or "database is locked" in text_


# ----------------------------------------------------------------------------------------------
# Output


def _photo_out(analysis: dict | None) -> dict | None:
    if not analysis:
        return None
    return {
        "sha256": analysis.get("sha256") or "",
        "width": int(analysis.get("width") or 0),
        "height": int(analysis.get("height") or 0),
        "faces": analysis.get("faces") or [],
        "main_face": analysis.get("main_face"),
        "quality": analysis.get("quality"),
        "error": analysis.get("error"),
        "timings_ms": analysis.get("timings_ms") or {},
    }


def _result_out(session: Session, row: ResultRow) -> dict:
    duplicates = session.execute(
        select(PossibleDuplicate.candidate_member_id, PossibleDuplicate.similarity)
        .where(PossibleDuplicate.result_id == row.id)
        .order_by(PossibleDuplicate.similarity.desc())
    ).all()
    review = session.scalar(select(Review).where(Review.result_id == row.id))
    shas = dict(
        session.execute(
            select(Photo.id, Photo.sha256).where(
                Photo.id.in_([row.gallery_photo_id or 0, row.verification_photo_id or 0])
            )
        ).all()
    )
    source = session.scalar(select(Batch.source).where(Batch.id == row.batch_id)) if row.batch_id else None
    return {
        "id": row.id,
        "member_id": row.member_id,
        "batch_id": row.batch_id,
        "source": source,
        "created_at": row.created_at,
        "status": row.status,
        "decided_at": row.decided_at,
        "decided_by": row.decided_by,
        "review": None
        if review is None
        else {
            "decision": review.decision,
            "reviewer": review.reviewer,
            "decided_at": review.decided_at,
            "same_person": review.same_person,
            "true_gender": review.true_gender,
        },
        "same_person": row.same_person,
        "similarity": row.similarity,
        "threshold": row.threshold,
        "uncertain_band": [row.band_low, row.band_high],
        "predicted_gender": row.predicted_gender,
        "gender_confidence": row.gender_confidence,
        "registered_gender": row.registered_gender,
        "flags": list(row.flags or []),
        "possible_duplicates": [{"member_id": m, "similarity": s} for m, s in duplicates],
        "gallery_photo_sha256": shas.get(row.gallery_photo_id),
        "verification_photo_sha256": shas.get(row.verification_photo_id),
        "gallery": _photo_out(row.gallery_analysis),
        "verification": _photo_out(row.verification_analysis),
        "timings_ms": row.timings,
        "latency_ms": row.latency_ms,
        "model_version": row.model_version,
    }


# ----------------------------------------------------------------------------------------------
# Search


def _search(
    state: _State, caller: Caller, data: bytes | None, sha: str | None, k: int, exclude: str | None
) -> dict:
    worker = state.require_engine()
    if sha is not None:
        with state.factory() as session:
            path = session.scalar(select(Photo.stored_path).where(Photo.sha256 == sha).limit(1))
            session.rollback()
        if path is None:
            raise ApiError(404, "unknown_photo", f"There is no stored photo {sha[:12]}….")
        try:
            data = state.store.read(path)
        except PhotoNotFound as exc:
            raise ApiError(404, "photo_missing", str(exc)) from None
    else:
        _checked_photo("search", data)
    analysis = worker.submit(_Job([data], pair=False)).result(timeout=ENGINE_TIMEOUT_S)
    if analysis.projection is None:
        raise ApiError(
            422, "no_usable_face", f"The photo cannot be searched: {analysis.error or 'no usable face'}"
        )
    with state.factory() as session:
        index = search.index_for(session.get_bind(), state.engine.model_version)
        started = time.perf_counter()
        found = index.search_candidates(analysis.projection, k, exclude_member=exclude)
        elapsed = (time.perf_counter() - started) * 1000
        audit.log(
            session,
            caller.actor,
            API_SEARCH,
            "photo",
            analysis.sha256,
            {"k": k, "candidates": [c.member_id for c in found][:10]},
        )
        session.commit()
    face = {
        "sha256": analysis.sha256,
        "width": analysis.width,
        "height": analysis.height,
        "faces": [
            {"box": list(f.box), "score": float(f.score), "keypoints": [list(p) for p in f.keypoints]}
            for f in analysis.faces
        ],
        "main_face": analysis.main_face,
        "quality": None if analysis.quality is None else float(analysis.quality),
        "error": analysis.error,
        "timings_ms": {k_: float(v) for k_, v in analysis.timings_ms.items()},
    }
    return {
        "model_version": state.engine.model_version,
        "duplicate_threshold": index.duplicate_threshold,
        "enrolled": len(index),
        "search_ms": elapsed,
        "face": face,
        "candidates": [
            {
                "member_id": c.member_id,
                "similarity": c.similarity,
                "possible_duplicate": c.similarity >= index.duplicate_threshold,
            }
            for c in found
        ],
    }


# ----------------------------------------------------------------------------------------------
# The app


api_key_scheme = APIKeyHeader(name=KEY_HEADER, auto_error=False, description="backend or reader key")


def _caller(request: Request) -> Caller:
    caller = getattr(request.state, "caller", None)
    if caller is None:  # the middleware always sets it on /v1/ paths; never trust its absence
        raise ApiError(401, "missing_api_key", f"Send your API key in the {KEY_HEADER} header.")
    return caller


def create_app(
    session_factory: sessionmaker | None = None,
    engine=None,
    *,
    photo_store: PhotoStore | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    load_engine: bool = True,
) -> FastAPI:
    """The API. Without a session factory: the configured database (migrated on start).
    Without an engine: core.verification.engine.Engine.load() in the background (503 until it is ready)."""
    if session_factory is None:
        from core.storage.db import init_db
        from core.storage.db import session_factory as make_factory

        session_factory = make_factory(init_db())
    state = _State(session_factory, photo_store or PhotoStore())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if engine is not None:
            await anyio.to_thread.run_sync(state.set_engine, engine)
        elif load_engine:
            _load_engine_in_background(state)
        else:
            state.model_error = "no engine configured"
        yield
        if state.worker is not None:
            await anyio.to_thread.run_sync(state.worker.stop)

    app = FastAPI(
        title="Face verification service API",
        version=API_VERSION,
        description=(
            "Verifications for the app backend: submit a member's photos, get the same result the "
            "dashboard shows (stored; flagged results go to the review queue), read a result and a "
            "member's history, search enrolled members by photo. Send the API key as X-API-Key."
        ),
        lifespan=lifespan,
    )
    app.state.api = state
    app.add_middleware(GuardMiddleware, state=state, max_body_bytes=max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "request_too_large"}
        message = {
            404: f"There is no endpoint {request.url.path}; see /openapi.json.",
            405: f"{request.method} is not allowed on {request.url.path}; see /openapi.json.",
        }.get(exc.status_code, str(exc.detail))
        return _error_response(
            exc.status_code,
            codes.get(exc.status_code, "error"),
            message,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            e = next(e for e in errors if e.get("type") == "json_invalid")
            detail = (e.get("ctx") or {}).get("error", "JSON decode error")
            return _error_response(400, "malformed_json", f"The request body is not valid JSON: {detail}.")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        is_upload = request.url.path.endswith("/upload")
        if request.method == "POST":
            if is_upload and content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
                return _error_response(
                    415, "unsupported_media_type", "Send multipart/form-data to this endpoint."
                )
            if not is_upload and content_type != "application/json" and not content_type.endswith("+json"):
                return _error_response(
                    415,
                    "unsupported_media_type",
                    "Send JSON (Content-Type: application/json), or files as multipart/form-data to the /upload endpoint.",
                )
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "problem": e.get("msg", "")}
            for e in errors
        ]
        summary = "; ".join(f"{d['field'] or 'body'}: {d['problem']}" for d in details[:5])
        return _error_response(422, "invalid_request", f"The request is not valid: {summary}.", details)

    @app.exception_handler(SQLAlchemyError)
    async def _db_error(request: Request, exc: SQLAlchemyError):
        log.exception("database error", exc_info=exc)
        return _error_response(
            503,
            "database_unavailable",
            "The database failed or cannot be reached; nothing was stored. Try again.",
        )

    @app.exception_handler(FaceVerifyError)
    async def _core_error(request: Request, exc: FaceVerifyError):
        log.exception("core error", exc_info=exc)
        return _error_response(503 if isinstance(exc, ModelError) else 500, exc.code, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error", exc_info=exc)
        return _error_response(
            500, "internal_error", "Something went wrong on the server; nothing was stored."
        )

    @app.exception_handler(TimeoutError)
    async def _timeout(request: Request, exc: TimeoutError):
        return _error_response(
            503, "engine_timeout", "The engine did not answer in time; nothing was stored. Try again."
        )

    secured = [Security(api_key_scheme)]

    @app.get("/health", response_model=HealthOut, tags=["service"], responses={503: {"model": HealthOut}})
    def health():
        """Liveness and readiness: 200 when the model is loaded and the database answers, else 503."""
        database = "ok"
        try:
            with state.factory() as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            database = f"unreachable: {type(getattr(exc, 'orig', exc)).__name__}"
        enrolled = dup = None
        if state.engine is not None and database == "ok":
            try:
                index = search.index_for(state.factory.kw["bind"], state.engine.model_version)
                enrolled, dup = len(index), index.duplicate_threshold
            except (SQLAlchemyError, ModelError):
                pass
        model_loaded = state.engine is not None
        status = "ok" if model_loaded and database == "ok" else ("starting" if state.loading else "degraded")
        body = {
            "status": status,
            "model_loaded": model_loaded,
            "model_version": state.engine.model_version if model_loaded else None,
            "model_error": state.model_error,
            "database": database,
            "enrolled": enrolled,
            "duplicate_threshold": dup,
            "api_version": API_VERSION,
        }
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.post(
        "/v1/verifications",
        response_model=VerificationOut,
        status_code=201,
        tags=["verifications"],
        dependencies=secured,
        responses=_errors(400, 401, 403, 404, 413, 415, 422, 503),
    )
    def submit_verification(body: VerificationRequest, request: Request):
        """Verify a member: gallery photo vs. verification selfie (base64 or stored sha256 references).

        Stored like a dashboard verification (a batch of one, source "api"); flagged results go to
        the review queue. Photos not given are the member's current stored photos."""
        caller = _caller(request)
        photos = {}
        for which in (GALLERY, VERIFICATION):
            raw = getattr(body, f"{which}_base64")
            if raw is not None:
                photos[which] = _checked_photo(which, _b64(which, raw))
            else:
                photos[which] = _PhotoIn(which, sha256=getattr(body, f"{which}_sha256"))
        out = _verify(state, caller, body.member_id, body.registered_gender, body.enrol, photos)
        return JSONResponse(
            jsonable(out), status_code=201, headers={"Location": f"/v1/verifications/{out['id']}"}
        )

    @app.post(
        "/v1/verifications/upload",
        response_model=VerificationOut,
        status_code=201,
        tags=["verifications"],
        dependencies=secured,
        responses=_errors(400, 401, 403, 404, 413, 415, 422, 503),
    )
    def submit_verification_upload(
        request: Request,
        member_id: Annotated[str, Form(min_length=1, max_length=64)],
        registered_gender: Annotated[str | None, Form(max_length=16)] = None,
        enrol: Annotated[bool, Form()] = False,
        gallery: Annotated[UploadFile | None, File(description="gallery photo")] = None,
        verification: Annotated[UploadFile | None, File(description="verification selfie")] = None,
        gallery_sha256: Annotated[str | None, Form(pattern=SHA256_PATTERN)] = None,
        verification_sha256: Annotated[str | None, Form(pattern=SHA256_PATTERN)] = None,
    ):
        """The same as POST /v1/verifications with the photos as multipart files."""
        caller = _caller(request)
        photos = {}
        for which, upload, sha in (
            (GALLERY, gallery, gallery_sha256),
            (VERIFICATION, verification, verification_sha256),
        ):
            data = _upload_bytes(which, upload)
            if data is not None and sha is not None:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"Give the {which} photo as a file or as {which}_sha256, not both.",
                )
            photos[which] = _checked_photo(which, data) if data is not None else _PhotoIn(which, sha256=sha)
        out = _verify(state, caller, member_id, registered_gender, enrol, photos)
        return JSONResponse(
            jsonable(out), status_code=201, headers={"Location": f"/v1/verifications/{out['id']}"}
        )

    @app.get(
        "/v1/verifications/{result_id}",
        response_model=VerificationOut,
        tags=["verifications"],
        dependencies=secured,
        responses=_errors(401, 403, 404, 503),
    )
    def get_verification(request: Request, result_id: Annotated[int, Path(ge=1, le=2**62)]):
        """One stored verification with its current status (a reviewer may have decided it since)."""
        _caller(request)
        with state.factory() as session:
            row = session.get(ResultRow, result_id)
            if row is None:
                raise ApiError(404, "unknown_verification", f"There is no verification {result_id}.")
            return JSONResponse(jsonable(_result_out(session, row)))

    @app.get(
        "/v1/members/{member_id:path}/verifications",
        response_model=MemberHistoryOut,
        tags=["members"],
        dependencies=secured,
        responses=_errors(401, 403, 404, 422, 503),
    )
    def member_verifications(
        request: Request,
        member_id: Annotated[str, Path(min_length=1, max_length=64)],
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ):
        """A member's verifications, newest first."""
        _caller(request)
        member_id = _member_id(member_id)
        with state.factory() as session:
            member = session.get(Member, member_id)
            if member is None:
                raise ApiError(404, "unknown_member", f"There is no member {member_id!r}.")
            total = (
                session.scalar(select(func.count(ResultRow.id)).where(ResultRow.member_id == member_id)) or 0
            )
            rows = session.execute(
                select(ResultRow, Batch.source)
                .outerjoin(Batch, Batch.id == ResultRow.batch_id)
                .where(ResultRow.member_id == member_id)
                .order_by(ResultRow.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            items = [
                {
                    "id": r.id,
                    "created_at": r.created_at,
                    "status": r.status,
                    "same_person": r.same_person,
                    "similarity": r.similarity,
                    "flags": [f.get("code", "") for f in (r.flags or [])],
                    "possible_duplicate": bool(r.possible_duplicate),
                    "decided_at": r.decided_at,
                    "decided_by": r.decided_by,
                    "batch_id": r.batch_id,
                    "source": source,
                    "model_version": r.model_version,
                }
                for r, source in rows
            ]
            out = {
                "member_id": member.id,
                "gender": member.gender,
                "status": member.status,
                "total": total,
                "limit": limit,
                "offset": offset,
                "items": items,
            }
            return JSONResponse(jsonable(out))

    @app.post(
        "/v1/search",
        response_model=SearchOut,
        tags=["search"],
        dependencies=secured,
        responses=_errors(400, 401, 403, 404, 413, 415, 422, 503),
    )
    def search_by_photo(body: SearchRequest, request: Request):
        """The enrolled members most similar to the face in a photo (1:N). Stores nothing but an audit entry."""
        caller = _caller(request)
        data = _b64("photo", body.photo_base64) if body.photo_base64 is not None else None
        return JSONResponse(
            jsonable(_search(state, caller, data, body.photo_sha256, body.k, body.exclude_member))
        )

    @app.post(
        "/v1/search/upload",
        response_model=SearchOut,
        tags=["search"],
        dependencies=secured,
        responses=_errors(400, 401, 403, 413, 415, 422, 503),
    )
    def search_by_photo_upload(
        request: Request,
        photo: Annotated[UploadFile, File(description="the photo to search")],
        k: Annotated[int, Form(ge=1, le=50)] = 10,
        exclude_member: Annotated[str | None, Form(max_length=64)] = None,
    ):
        """POST /v1/search with the photo as a multipart file."""
        caller = _caller(request)
        data = _upload_bytes("search", photo) or b""
        return JSONResponse(jsonable(_search(state, caller, data, None, k, exclude_member)))

    return app


def jsonable(value):
    """Datetimes as ISO 8601 UTC with Z; everything else JSON-ready."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds") + ("Z" if value.tzinfo is None else "")
    return value


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.api", description="Serve the API, or manage API keys."
    )
    parser.add_argument("--url", help="SQLAlchemy URL (default: DATABASE_URL setting)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 1024 / 1024)
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="cmd")
    create = sub.add_parser("create-key", help="create an API key (printed once)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=API_ROLES)
    sub.add_parser("list-keys", help="list API keys (names, roles, prefixes; never the keys)")
    revoke = sub.add_parser("revoke-key", help="revoke every active key with this name")
    revoke.add_argument("--name", required=True)
    args = parser.parse_args(argv)

    from core.storage.db import init_db
    from core.storage.db import session_factory as make_factory

    db = init_db(args.url)
    factory = make_factory(db)
    if args.cmd == "create-key":
        with factory() as session:
            try:
                key, row = create_key(session, args.name, args.role)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        print(key)
        print(
            f"Created {row.role} key {row.name!r} ({row.key_prefix}…). It is shown only now; store it safely.",
            file=sys.stderr,
        )
        return 0
    if args.cmd == "list-keys":
        with factory() as session:
            for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at)):
                state_ = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                used = f"last used {row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never used"
                print(f"{row.name:<24} {row.role:<8} {row.key_prefix}…  {state_:<18} {used}")
        return 0
    if args.cmd == "revoke-key":
        with factory() as session:
            n = revoke_key(session, args.name)
        print(f"revoked {n} key(s) named {args.name!r}")
        return 0 if n else 1

    import uvicorn

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO))
    app = create_app(factory, max_body_bytes=int(args.max_body_mb * 1024 * 1024))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
