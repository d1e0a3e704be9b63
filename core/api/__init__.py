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

Modules (FastAPI's "bigger applications" layout: one router per resource over shared dependencies):
    app         create_app(): middleware, error handlers, the routers
    routers/    health, verifications, members, search: the endpoints, thin
    deps        the dependencies every router declares: State (database, store, engine), CallerKey
    guard       ASGI middleware: API key and role, then the body limit, before the body is read
    keys        API keys and roles          state    AppState and the engine worker thread
    inputs      checking member ids, genders and photos       verifying   resolve, run, store a verification
    searching   1:N search by photo         output   rows -> response bodies
    schemas     pydantic bodies             errors   ApiError and the JSON error responses
    settings    limits and names            server   uvicorn with limits, several workers

Command line (core.cli.api):
    faceverify api serve --port PORT [--host 127.0.0.1] [--url DATABASE_URL] [--workers N]
    faceverify api create-key --name NAME --role backend|reader        prints the key once
    faceverify api list-keys | revoke-key --name NAME
"""

from core.api.app import create_app
from core.api.keys import create_key, hash_key, revoke_key

__all__ = ["create_app", "create_key", "hash_key", "revoke_key"]
