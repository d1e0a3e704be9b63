"""Encryption at rest for the photo store (optional, off unless PHOTO_ENCRYPTION_KEY is set).

A stored file is either the plain photo (as before) or a sealed one:

    b"FVENC1" | key id (8 bytes) | nonce (12 bytes) | AES-256-GCM ciphertext and tag

The key id is the start of sha256(key), so a file names the key that opens it and a rotation can
tell which files still need rewriting. The photo's content hash (the file name) is the hash of the
plain bytes and is bound to the ciphertext as associated data: a sealed file copied under another
photo's name does not open.

Settings:
    PHOTO_ENCRYPTION_KEY        the key new photos are sealed with: 32 bytes, URL-safe base64
                                (`faceverify store new-key` prints one)
    PHOTO_ENCRYPTION_OLD_KEYS   earlier keys, comma-separated, still accepted for reading while
                                `faceverify store rotate-key` rewrites the store
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core import config
from core.errors import FaceVerifyError

MAGIC = b"FVENC1"
KEY_ID_LEN = 8
NONCE_LEN = 12
TAG_LEN = 16
HEADER_LEN = len(MAGIC) + KEY_ID_LEN + NONCE_LEN
OVERHEAD = HEADER_LEN + TAG_LEN  # sealed size = plain size + OVERHEAD

KEY_SETTING = "PHOTO_ENCRYPTION_KEY"
OLD_KEYS_SETTING = "PHOTO_ENCRYPTION_OLD_KEYS"


class PhotoKeyError(FaceVerifyError):
    """A key setting is unusable, or a sealed photo needs a key that is not configured."""

    code = "photo_key_error"


@dataclass(frozen=True)
class Key:
    key_id: bytes
    aead: AESGCM

    @property
    def label(self) -> str:
        return self.key_id.hex()


def parse_key(text: str, setting: str = KEY_SETTING) -> Key:
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode("ascii") + b"==")
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise PhotoKeyError(f"{setting} is not URL-safe base64.") from None
    if len(raw) != 32:
        raise PhotoKeyError(f"{setting} must hold 32 bytes (AES-256), not {len(raw)}.")
    return Key(hashlib.sha256(raw).digest()[:KEY_ID_LEN], AESGCM(raw))


def new_key_text() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class KeyRing:
    """The key to seal with (None: store plain photos) and every key accepted for opening."""

    current: Key | None
    readable: dict[bytes, Key]

    @classmethod
    def from_texts(cls, current: str | None, old: str | list[str] | None = None) -> KeyRing:
        old_texts = old.split(",") if isinstance(old, str) else list(old or [])
        current_key = parse_key(current) if current else None
        readable = {}
        for text in old_texts:
            if text.strip():
                key = parse_key(text, OLD_KEYS_SETTING)
                readable[key.key_id] = key
        if current_key is not None:
            readable[current_key.key_id] = current_key
        return cls(current_key, readable)

    @classmethod
    def from_settings(cls) -> KeyRing:
        return cls.from_texts(config.setting(KEY_SETTING), config.setting(OLD_KEYS_SETTING))

    @property
    def enabled(self) -> bool:
        return self.current is not None


NO_KEYS = KeyRing(None, {})


def is_sealed(blob: bytes) -> bool:
    return blob[: len(MAGIC)] == MAGIC


def sealed_key_id(blob: bytes) -> bytes | None:
    return blob[len(MAGIC) : len(MAGIC) + KEY_ID_LEN] if is_sealed(blob) else None


def seal(plain: bytes, sha256: str, key: Key) -> bytes:
    nonce = os.urandom(NONCE_LEN)
    return MAGIC + key.key_id + nonce + key.aead.encrypt(nonce, plain, sha256.encode("ascii"))


def unseal(blob: bytes, sha256: str, keys: KeyRing) -> bytes:
    """The plain photo: a plain file as it is, a sealed one opened with the key it names."""
    if not is_sealed(blob):
        return blob
    key_id = sealed_key_id(blob)
    key = keys.readable.get(key_id)
    if key is None:
        raise PhotoKeyError(
            f"Photo {sha256[:12]}… is encrypted with key {key_id.hex()}, which is not configured "
            f"({KEY_SETTING} or {OLD_KEYS_SETTING})."
        )
    nonce = blob[len(MAGIC) + KEY_ID_LEN : HEADER_LEN]
    try:
        return key.aead.decrypt(nonce, blob[HEADER_LEN:], sha256.encode("ascii"))
    except InvalidTag:
        raise PhotoKeyError(
            f"Photo {sha256[:12]}… does not open with key {key_id.hex()}: the file is damaged or not this photo."
        ) from None
