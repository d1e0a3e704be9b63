"""Limits, header names and audit action names of the API, in one place."""

from __future__ import annotations

import re
from datetime import timedelta

from core import config
from core.verification.imaging import DEFAULT_MAX_BYTES

API_VERSION = "1.0.0"
MAX_BODY_BYTES = config.declared("API_MAX_BODY_BYTES").default  # defaults of the settings of the same name
MAX_PHOTO_BYTES = DEFAULT_MAX_BYTES  # 25 MB, core.verification.imaging's limit
MAX_BASE64_CHARS = (MAX_BODY_BYTES * 4) // 3 + 4
MAX_QUEUE = 64  # verifications waiting for the engine before new ones get 503
ENGINE_BATCH = 8  # requests whose photos go through the network together
ENGINE_TIMEOUT_S = 120.0  # a request never waits longer than this for the engine
STORE_CONCURRENCY = 4  # transactions at once (each may also use a second connection to sync the index)
MAX_IN_FLIGHT = config.declared("API_MAX_IN_FLIGHT").default  # photo requests at once; the next gets 503
# The API process stays under API_MEMORY_LIMIT_MB with its models loaded (about 1.3 GB): what is
# left is shared by the bodies of admitted photo requests (ADMISSION_MB: each request counts its
# Content-Length times the copies it makes) and the decoder (DECODE_MB, core.verification.imaging).
MEMORY_LIMIT_MB = 1500
ADMISSION_MB = config.declared("API_ADMISSION_MB").default
DECODE_MB = config.declared("API_DECODE_MEMORY_MB").default  # DECODE_MEMORY_MB wins when given
# Copies of its body a request holds while it is served: a JSON body, its parsed text and the
# decoded base64 photos; an upload is spooled to disk and read once.
JSON_BODY_COPIES = 2.75
UPLOAD_BODY_COPIES = 1.25
MAX_HEADERS = 64
MAX_HEADER_BYTES = 8 * 1024  # one header, name and value
H11_MAX_HEADER_BYTES = 32 * 1024  # the whole header block, refused by h11 before the app sees it
HEADER_TIMEOUT_S = 10.0  # a connection must deliver its request line and headers within this
BODY_CHUNK_TIMEOUT_S = 30.0  # and then each part of its body within this
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


def megabytes(n: int) -> str:
    """Bytes in MB as people count them for upload limits (1 MB = 1024 * 1024 bytes)."""
    return f"{n / (1024 * 1024):.1f}".removesuffix(".0")


NO_ENGINE = "no engine configured"  # the model_error of an API started without a model
