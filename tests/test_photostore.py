"""Photos stored once by content hash, written atomically, read back by hash."""

from __future__ import annotations

import hashlib

import pytest

from core.storage.photostore import PhotoNotFound, PhotoStore


def test_put_is_idempotent_and_content_addressed(photo_store, make_photo):
    data = make_photo(1)
    first = photo_store.put(data, "jpg")
    second = photo_store.put(data, "jpg")
    sha = hashlib.sha256(data).hexdigest()
    assert first.sha256 == second.sha256 == sha
    assert first.created and not second.created
    assert first.relative_path == f"{sha[:2]}/{sha[2:4]}/{sha}.jpg"
    files = [p for p in photo_store.root.rglob("*") if p.is_file()]
    assert len(files) == 1, "one file per content, no temporary files left behind"
    assert photo_store.get(sha) == data
    assert photo_store.read(first.relative_path) == data
    assert photo_store.exists(sha)


def test_different_bytes_different_files(photo_store, make_photo):
    a = photo_store.put(make_photo(1))
    b = photo_store.put(make_photo(2))
    assert a.sha256 != b.sha256
    assert photo_store.get(a.sha256) != photo_store.get(b.sha256)


def test_missing_and_damaged_photos_are_reported(photo_store, make_photo):
    with pytest.raises(PhotoNotFound):
        photo_store.get("0" * 64)
    stored = photo_store.put(make_photo(3))
    (photo_store.root / stored.relative_path).write_bytes(b"changed on disk")
    with pytest.raises(PhotoNotFound, match="damaged"):
        photo_store.get(stored.sha256, verify=True)


def test_reading_outside_the_store_is_refused(photo_store, tmp_path):
    (tmp_path / "secret.txt").write_text("no")
    with pytest.raises(PhotoNotFound, match="outside"):
        photo_store.read("../secret.txt")
    with pytest.raises(ValueError):
        photo_store.get("../../etc/passwd")


def test_default_root_comes_from_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("PHOTO_STORE_DIR", str(tmp_path / "configured"))
    assert PhotoStore().root == tmp_path / "configured"
