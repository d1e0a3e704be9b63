"""Photos in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph), same layout as the folder store.

s3://BUCKET/PREFIX holds PREFIX/ab/cd/<sha256>.<ext>: the relative path the database keeps is the
same in both backends, so moving photos between them needs no database change. The endpoint and
credentials are boto3's own settings (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION), read from the environment or .streamlit/secrets.toml. With
none of them set boto3 falls back to its usual chain (profiles, instance roles).

A photo is written once per hash: a conditional PUT (If-None-Match: *) loses cleanly to a
concurrent writer of the same bytes, and a PUT is all or nothing, so no half-written object ever
sits under a final key. Every failure to reach the store is a PhotoStoreUnavailable.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from functools import cached_property

from core import config
from core.storage.encryption import KeyRing
from core.storage.photostore import (
    PhotoNotFound,
    PhotoStoreUnavailable,
    Sealing,
    StoredEntry,
    StoredPhoto,
    content_path,
    parse_content_path,
    sha256_hex,
)

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_MISSING = {"404", "NoSuchKey", "NotFound"}
_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """s3://BUCKET/PREFIX -> (bucket, "prefix/") with the prefix empty or ending in a slash."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise ValueError(
            f"PHOTO_STORE_URL {url!r}: {bucket!r} is not a valid bucket name "
            "(3 to 63 lower-case letters, digits, dots and hyphens)"
        )
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ValueError(f"PHOTO_STORE_URL {url!r}: the prefix may not contain empty, '.' or '..' parts")
    return bucket, f"{prefix}/" if prefix else ""


def s3_client():
    """A boto3 S3 client configured from the settings (environment, then secrets.toml)."""
    import boto3
    from botocore.config import Config

    endpoint = config.setting("AWS_ENDPOINT_URL_S3") or config.setting("AWS_ENDPOINT_URL")
    kwargs = {}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    for name, arg in (
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
    ):
        value = config.setting(name)
        if value:
            kwargs[arg] = value
    region = config.setting("AWS_REGION") or config.setting("AWS_DEFAULT_REGION")
    if region is None and endpoint:
        region = "us-east-1"  # self-hosted stores ignore it, but request signing needs one
    client_config = Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "max_attempts": 4},
        # Self-hosted stores are reached by a host name or address, not a bucket sub-domain.
        s3={"addressing_style": "path"} if endpoint else {},
    )
    # A session per client: boto3's default session is not safe to share between threads.
    return boto3.session.Session().client("s3", region_name=region, config=client_config, **kwargs)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3PhotoStore(Sealing):
    """The photo store interface (see core.storage.photostore) on one bucket and prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, client=None, keys: KeyRing | None = None):
        self.bucket, self.prefix = parse_s3_url(f"s3://{bucket}/{prefix}")
        self._client = client
        self._init_keys(keys)

    @classmethod
    def from_url(cls, url: str, *, client=None, keys: KeyRing | None = None) -> S3PhotoStore:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, client=client, keys=keys)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def __repr__(self) -> str:
        return f"S3PhotoStore({self.url!r})"

    @cached_property
    def client(self):
        return self._client if self._client is not None else s3_client()

    def _call(self, what: str, fn, **kwargs):
        """One S3 call; connection and permission failures become PhotoStoreUnavailable."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = _error_code(exc)
            if code in _MISSING or code in _LOST_RACE:
                raise  # the caller decides what a missing object or a lost race means
            if code == "NoSuchBucket":
                raise PhotoStoreUnavailable(
                    f"The photo store bucket {self.bucket!r} does not exist."
                ) from exc
            raise PhotoStoreUnavailable(
                f"The photo store at {self.url} refused to {what} ({code or 'error'}: "
                f"{exc.response.get('Error', {}).get('Message', '')})."
            ) from exc
        except NoCredentialsError as exc:
            raise PhotoStoreUnavailable(
                f"The photo store at {self.url} needs credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (environment or .streamlit/secrets.toml)."
            ) from exc
        except BotoCoreError as exc:
            raise PhotoStoreUnavailable(
                f"The photo store at {self.url} cannot be reached to {what} ({type(exc).__name__}: {exc})."
            ) from exc

    def check(self) -> None:
        """Raise PhotoStoreUnavailable unless the bucket answers (for start-up checks)."""
        from botocore.exceptions import ClientError

        try:
            self._call("open the bucket", self.client.head_bucket)
        except ClientError as exc:
            raise PhotoStoreUnavailable(
                f"The photo store bucket {self.bucket!r} does not exist or cannot be opened."
            ) from exc

    def create_bucket(self) -> bool:
        """Create the bucket if it is missing (for set-up commands and tests); True if created."""
        from botocore.exceptions import ClientError

        try:
            self.check()
            return False
        except PhotoStoreUnavailable:
            pass
        try:
            self._call("create the bucket", self.client.create_bucket)
        except ClientError as exc:
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        return True

    # -- the interface -----------------------------------------------------------------------

    def relative_path(self, sha256: str, ext: str) -> str:
        return content_path(sha256, ext)

    def put(self, data: bytes, ext: str = "jpg") -> StoredPhoto:
        from botocore.exceptions import ClientError

        sha = sha256_hex(data)
        rel = content_path(sha, ext)
        key = self.prefix + rel
        size = self._size(key)
        if self._already_stored(size, len(data)):
            return StoredPhoto(sha, rel, len(data), created=False)
        try:
            # A damaged object (wrong size) is overwritten, as on disk.
            self._put_object(key, rel, self._seal(data, sha), only_new=size is None)
        except ClientError as exc:
            if _error_code(exc) in _LOST_RACE:  # a concurrent writer of the same bytes won
                return StoredPhoto(sha, rel, len(data), created=False)
            raise
        return StoredPhoto(sha, rel, len(data), created=True)

    def _put_object(self, key: str, rel: str, blob: bytes, *, only_new: bool) -> None:
        extra = {"IfNoneMatch": "*"} if only_new else {}
        self._call(
            "save the photo",
            self.client.put_object,
            Key=key,
            Body=blob,
            ContentType=_CONTENT_TYPES.get(rel.rsplit(".", 1)[-1], "application/octet-stream"),
            # The store checks the bytes it received against their hash before it keeps them.
            ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256_hex(blob))).decode(),
            **extra,
        )

    def _size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self._call("look up the photo", self.client.head_object, Key=key)["ContentLength"])
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return None
            raise

    def _keys_for(self, sha256: str) -> list[str]:
        """The stored keys of a hash, whatever its extension (normally one)."""
        folder = content_path(sha256, "bin").rsplit(".", 1)[0]
        listing = self._call(
            "list the photo", self.client.list_objects_v2, Prefix=f"{self.prefix}{folder}.", MaxKeys=20
        )
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def _get_key(self, key: str, relative_path: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._call("read the photo", self.client.get_object, Key=key)["Body"]
            try:
                return body.read()
            except BotoCoreError as exc:  # the connection dropped halfway through the body
                raise PhotoStoreUnavailable(
                    f"The photo store at {self.url} stopped sending {relative_path} ({type(exc).__name__})."
                ) from exc
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                raise PhotoNotFound(
                    f"Photo file {relative_path} is missing from the photo store at {self.url}."
                ) from None
            raise

    def get(self, sha256: str, *, verify: bool = False) -> bytes:
        keys = self._keys_for(sha256)  # content_path() has refused anything that is not a hash
        if not keys:
            raise PhotoNotFound(f"Photo {sha256[:12]}… is not in the photo store at {self.url}.")
        data = self._open(self._get_key(keys[0], keys[0][len(self.prefix) :]), sha256)
        if verify and sha256_hex(data) != sha256:
            raise PhotoNotFound(f"Photo {sha256[:12]}… in the photo store is damaged (hash differs).")
        return data

    def read(self, relative_path: str) -> bytes:
        """Read by the path the database stored; only content-addressed paths are accepted."""
        return self._open(self.read_raw(relative_path), parse_content_path(relative_path) or "")

    def read_raw(self, relative_path: str) -> bytes:
        """The object as stored (sealed when encrypted)."""
        if parse_content_path(relative_path) is None:
            # Keys are plain strings in S3, but some stores normalise '..': refuse anything else.
            raise PhotoNotFound(f"Stored path {relative_path!r} points outside the photo store.")
        return self._get_key(self.prefix + relative_path, relative_path)

    def write_raw(self, relative_path: str, blob: bytes) -> None:
        """Replace a stored object (key rotation): one PUT, all or nothing."""
        if parse_content_path(relative_path) is None:
            raise PhotoNotFound(f"Stored path {relative_path!r} is not a photo path of the store.")
        self._put_object(self.prefix + relative_path, relative_path, blob, only_new=False)

    def exists(self, sha256: str) -> bool:
        return bool(self._keys_for(sha256))

    def delete(self, sha256: str) -> int:
        """Remove every stored file of this hash; the number removed (0 when there was none)."""
        keys = self._keys_for(sha256)
        for key in keys:
            self._call("delete the photo", self.client.delete_object, Key=key)
        return len(keys)

    def iterate(self) -> Iterator[StoredEntry]:
        """Every stored photo (hash, relative path, size), in key order; other keys are ignored."""
        token = None
        while True:
            kwargs = {"Prefix": self.prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list the photos", self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                rel = item["Key"][len(self.prefix) :]
                sha = parse_content_path(rel)
                if sha is not None:
                    yield StoredEntry(sha, rel, int(item["Size"]))
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]
