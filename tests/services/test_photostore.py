"""Photos stored once by content hash, written atomically, read back by hash: on a folder and on S3.

Every test that takes `any_photo_store` runs twice: on the folder backend and on a real SeaweedFS
server (started once per session; see tests/objectstore.py).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from core import cli
from core.storage import photo_copy
from core.storage.photostore import PhotoNotFound, PhotoStore, PhotoStoreUnavailable, content_path
from core.storage.s3store import S3PhotoStore, parse_s3_url
from core.storage.stores import open_photo_store


def _overwrite(store, relative_path: str, data: bytes) -> None:
    """Change a stored photo behind the store's back (disk damage, a stray writer)."""
    if isinstance(store, S3PhotoStore):
        store.client.put_object(Bucket=store.bucket, Key=store.prefix + relative_path, Body=data)
    else:
        (store.root / relative_path).write_bytes(data)


def _all_objects(store) -> list[str]:
    """Everything under the store's root, not only what iterate() recognises as photos."""
    if isinstance(store, S3PhotoStore):
        listing = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
        return [o["Key"] for o in listing.get("Contents", [])]
    return [str(p) for p in store.root.rglob("*") if p.is_file()]


def test_put_is_idempotent_and_content_addressed(any_photo_store, make_photo):
    store = any_photo_store
    data = make_photo(1)
    first = store.put(data, "jpg")
    second = store.put(data, "jpg")
    sha = hashlib.sha256(data).hexdigest()
    assert first.sha256 == second.sha256 == sha
    assert first.created and not second.created
    assert first.relative_path == f"{sha[:2]}/{sha[2:4]}/{sha}.jpg"
    assert len(_all_objects(store)) == 1, "one file per content, no temporary files left behind"
    assert store.get(sha) == data
    assert store.read(first.relative_path) == data
    assert store.exists(sha)


def test_concurrent_writers_of_the_same_photo_store_it_once(any_photo_store, make_photo):
    data = make_photo(7)
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: any_photo_store.put(data), range(12)))
    assert {r.relative_path for r in results} == {results[0].relative_path}
    assert len(_all_objects(any_photo_store)) == 1
    assert any_photo_store.get(results[0].sha256, verify=True) == data


def test_different_bytes_different_files(any_photo_store, make_photo):
    a = any_photo_store.put(make_photo(1))
    b = any_photo_store.put(make_photo(2))
    assert a.sha256 != b.sha256
    assert any_photo_store.get(a.sha256) != any_photo_store.get(b.sha256)


def test_missing_and_damaged_photos_are_reported(any_photo_store, make_photo):
    store = any_photo_store
    with pytest.raises(PhotoNotFound):
        store.get("0" * 64)
    with pytest.raises(PhotoNotFound, match="missing"):
        store.read(content_path("1" * 64, "jpg"))
    stored = store.put(make_photo(3))
    _overwrite(store, stored.relative_path, b"changed on disk")
    with pytest.raises(PhotoNotFound, match="damaged"):
        store.get(stored.sha256, verify=True)
    # A damaged file (wrong size) is replaced by the next put of the right bytes.
    assert store.put(make_photo(3)).created
    assert store.get(stored.sha256, verify=True) == make_photo(3)


def test_reading_outside_the_store_is_refused(any_photo_store, tmp_path):
    (tmp_path / "secret.txt").write_text("no")
    with pytest.raises(PhotoNotFound, match="outside"):
        any_photo_store.read("../secret.txt")
    with pytest.raises(ValueError):
        any_photo_store.get("../../etc/passwd")
    with pytest.raises(ValueError):
        any_photo_store.delete("../../etc/passwd")


def test_delete_and_iterate(any_photo_store, make_photo):
    store = any_photo_store
    kept, erased = store.put(make_photo(4), "jpg"), store.put(make_photo(5), "png")
    assert {e.sha256 for e in store.iterate()} == {kept.sha256, erased.sha256}
    assert {e.relative_path: e.size_bytes for e in store.iterate()}[erased.relative_path] == erased.size_bytes
    assert store.delete(erased.sha256) == 1
    assert store.delete(erased.sha256) == 0, "deleting twice is not an error"
    assert not store.exists(erased.sha256)
    with pytest.raises(PhotoNotFound):
        store.read(erased.relative_path)
    assert [e.sha256 for e in store.iterate()] == [kept.sha256]


def test_default_root_comes_from_settings(monkeypatch, tmp_path):
    monkeypatch.delenv("PHOTO_STORE_URL", raising=False)
    monkeypatch.setenv("PHOTO_STORE_DIR", str(tmp_path / "configured"))
    assert PhotoStore().root == tmp_path / "configured"
    assert open_photo_store().root == tmp_path / "configured"
    monkeypatch.setenv("PHOTO_STORE_URL", str(tmp_path / "by-url"))
    assert open_photo_store().root == tmp_path / "by-url"
    monkeypatch.setenv("PHOTO_STORE_URL", "s3://member-photos/prod/photos/")
    store = open_photo_store()
    assert isinstance(store, S3PhotoStore)
    assert (store.bucket, store.prefix, store.url) == (
        "member-photos",
        "prod/photos/",
        "s3://member-photos/prod/photos/",
    )


@pytest.mark.parametrize(
    "url",
    ["s3://", "s3://UPPER/x", "s3://ok-bucket/a/../b", "s3://ok-bucket/a//b", "gs://bucket/x", "ftp://h/x"],
)
def test_unusable_store_urls_are_refused(url):
    with pytest.raises(ValueError):
        open_photo_store(url)


def test_prefixes_normalise():
    assert parse_s3_url("s3://bucket-1") == ("bucket-1", "")
    assert parse_s3_url("s3://bucket-1/a/b/") == ("bucket-1", "a/b/")


@pytest.mark.s3
def test_s3_settings_come_from_the_environment(seaweedfs, seaweedfs_bucket, monkeypatch, make_photo):
    """PHOTO_STORE_URL plus boto3's own variables: no code path of ours passes a client."""
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PHOTO_STORE_URL", f"s3://{seaweedfs_bucket}/from-env")
    stored = open_photo_store().put(make_photo(11))
    assert open_photo_store().read(stored.relative_path) == make_photo(11)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(PhotoStoreUnavailable, match="refused"):
        open_photo_store().read(stored.relative_path)


@pytest.mark.s3
def test_s3_settings_come_from_secrets_toml(seaweedfs, seaweedfs_bucket, monkeypatch, tmp_path, make_photo):
    from core import config

    for name in ("PHOTO_STORE_URL", "PHOTO_STORE_DIR", *seaweedfs.env()):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))  # no profile from the machine
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    secrets = {**seaweedfs.env(), "PHOTO_STORE_URL": f"s3://{seaweedfs_bucket}/from-secrets"}
    monkeypatch.setattr(config, "_secrets", lambda: secrets)
    store = open_photo_store()
    assert store.url == f"s3://{seaweedfs_bucket}/from-secrets/"
    assert store.read(store.put(make_photo(12)).relative_path) == make_photo(12)


@pytest.mark.s3
def test_missing_bucket_and_stopped_store_are_typed_errors(seaweedfs, make_photo):
    from objectstore import SeaweedFS, free_ports

    missing = S3PhotoStore("fv-no-such-bucket", "", client=seaweedfs.client())
    with pytest.raises(PhotoStoreUnavailable, match="does not exist"):
        missing.put(make_photo(1))
    with pytest.raises(PhotoStoreUnavailable):
        missing.check()
    nobody = SeaweedFS(seaweedfs.data_dir, ports={"s3": free_ports(1)[0]})  # nothing listens there
    unreachable = S3PhotoStore("any-bucket", "", client=nobody.client())
    with pytest.raises(PhotoStoreUnavailable, match="cannot be reached"):
        unreachable.read(content_path("2" * 64, "jpg"))
    with pytest.raises(OSError):  # what the importer already turns into a row error
        unreachable.put(make_photo(2))


@pytest.mark.s3
def test_copy_folder_to_bucket_and_back_resumes_and_checks_hashes(
    tmp_path, seaweedfs, s3_photo_store, make_photo, capsys, monkeypatch
):
    for name, value in seaweedfs.env().items():  # the command reads the settings, as in production
        monkeypatch.setenv(name, value)
    folder = PhotoStore(tmp_path / "folder", fsync=False)
    stored = [folder.put(make_photo(i), "jpg") for i in range(12)]
    bucket = s3_photo_store
    # An earlier run that stopped after two photos, one of which arrived damaged.
    bucket.put(make_photo(0))
    _overwrite(bucket, stored[1].relative_path, b"x" * len(make_photo(1)))  # right size, wrong bytes

    first = photo_copy.copy_store(folder, bucket, workers=3)
    assert (first.seen, first.copied, first.skipped, first.ok) == (12, 10, 2, True)
    again = photo_copy.copy_store(folder, bucket, verify_existing=True)
    assert (again.copied, again.replaced, again.skipped) == (0, 1, 11), (
        "the damaged copy is found and replaced"
    )
    for photo in stored:
        assert bucket.get(photo.sha256, verify=True) == folder.read(photo.relative_path)

    # And back, by the command line, into an empty folder; a damaged source photo is not copied.
    _overwrite(bucket, stored[5].relative_path, b"damaged in the bucket")
    back = tmp_path / "restored"
    code = cli.main(
        ["store", "copy", "--from", bucket.url, "--to", str(back), "--json", str(tmp_path / "r.json")]
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 1, "a damaged source photo makes the command fail"
    assert report["copied"] == 11 and report["damaged_source"] == [stored[5].relative_path]
    restored = PhotoStore(back)
    assert sorted(e.relative_path for e in restored.iterate()) == sorted(
        p.relative_path for p in stored if p is not stored[5]
    )
    assert json.loads(capsys.readouterr().out)["copied"] == 11


def test_copy_refuses_the_same_store_twice(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["store", "copy", "--from", str(tmp_path), "--to", str(tmp_path)])
