"""The audit chain's key, kept outside the database, and the exported chain head.

AUDIT_KEY        the key itself (any string of at least 32 characters; e.g. 64 hex digits)
AUDIT_KEY_FILE   a file holding it (default data/runtime/audit.key). A fresh install with neither
                 generates one there with permissions 0600 and logs a warning saying so: copy it
                 somewhere safe, since entries linked with it can only be verified with it.
AUDIT_HEAD_FILE  where export_head() writes the chain's head (default data/runtime/audit-head.json);
                 point it at storage the database user cannot write (another host's mount, a
                 write-once volume). `audit export-head` writes it; run it periodically (cron).

With the key, a rewrite with recomputed hashes fails `audit verify`: the hashes cannot be made
without the key. With the exported head, even the owner of the key is caught rewriting the past.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

from core import config

log = logging.getLogger(__name__)

MIN_KEY_CHARS = 32


class AuditKeyError(ValueError):
    pass


def key_file() -> Path:
    return config.get("AUDIT_KEY_FILE")


def head_file() -> Path:
    return Path(config.setting("AUDIT_HEAD_FILE") or config.RUNTIME_DIR / "audit-head.json")


def _generate(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.warning(
        "No audit key was configured: generated one at %s (permissions 0600). Keep a copy outside "
        "this machine; set AUDIT_KEY_FILE to use it elsewhere.",
        path,
    )
    return key.encode()


def audit_key(*, create: bool = True) -> bytes | None:
    """The key: AUDIT_KEY, else the AUDIT_KEY_FILE file, else (create=True) a new generated file.
    Read at each use (a small file): a key file removed or replaced is noticed at once."""
    value = config.setting("AUDIT_KEY")
    source = "AUDIT_KEY" if value else str(key_file())
    if value:
        key = value.strip().encode()
    else:
        path = key_file()
        try:
            key = path.read_text().strip().encode()
        except FileNotFoundError:
            if not create:
                return None
            try:
                key = _generate(path)
            except FileExistsError:  # another process made it first
                key = path.read_text().strip().encode()
    if len(key) < MIN_KEY_CHARS:
        raise AuditKeyError(f"The audit key ({source}) must be at least {MIN_KEY_CHARS} characters.")
    return key


def export_head(
    seq: int, last_hash: str, keyed_from: int | None, path: Path | None = None, *, database: str = ""
) -> Path:
    """Write the chain's head to the head file (atomically)."""
    from core.storage.schema import utcnow

    path = path or head_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    body = {
        "database": database,  # the URL without its password: a head is compared with its own chain
        "seq": seq,
        "hash": last_hash,
        "keyed_from": keyed_from,
        "exported_at": utcnow().isoformat(timespec="seconds"),
    }
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_head(path: Path | None = None) -> dict | None:
    path = path or head_file()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuditKeyError(f"The exported audit head {path} cannot be read: {exc}") from None
