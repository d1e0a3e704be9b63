"""Shared fixtures.

Database fixtures run every test that uses them twice: on SQLite (a file in tmp_path) and on the
real MariaDB/MySQL server (marked `mysql`). The server is TEST_MYSQL_URL (no database name),
default mysql+pymysql://root@127.0.0.1:3306; each test session creates its own databases there
(faceverify_test_<pid>...) and drops them at the end. When the server cannot be reached the MySQL
half is skipped locally but FAILS when CI=true, so CI can never pass without having run it.

    db_url            URL of a fresh, migrated, empty database (sqlite / mysql)
    db_engine         SQLAlchemy engine for db_url
    session_factory   sessionmaker bound to db_engine
    session           one Session, closed after the test
    photo_store       PhotoStore in tmp_path
    users             {role: User} one active user per role, password USER_PASSWORD
    quick_password_hashes  argon2id at its lowest cost (tests that sign in dozens of times)
    new_database_url  factory: URL of another empty, *unmigrated* database of the same backend
    make_photo        factory: make_photo(seed) -> distinct small JPEG bytes
    make_result       factory: a core.verification.result.VerificationResult built by hand (engine_result)
    add_member        factory: add_member(member_id, gender, seeds) -> Member with stored photos
"""

from __future__ import annotations

import io
import itertools
import os
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) must find the core package
    sys.path.insert(0, str(ROOT))
# Test modules share fixtures across groups (`from test_api import api`): each group's folder is
# importable whichever files a run selects.
for _group in sorted(p for p in Path(__file__).resolve().parent.iterdir() if p.is_dir()):
    if not _group.name.startswith((".", "_")) and str(_group) not in sys.path:
        sys.path.append(str(_group))


# The groups of tests (tests/<group>/), as the code is laid out. The fast lane, `pytest -m "not slow"`,
# leaves out the groups that start servers, browsers or the page runner, the files that train
# models or run benchmarks, and the tests marked slow one by one (those that start `python -m core`
# in a fresh process); CI runs everything.
SLOW_GROUPS = {"e2e", "services", "api", "pages"}
SLOW_FILES = {
    "test_training.py",
    "test_gender_training.py",
    "test_groups_and_cohort.py",
    "test_benchmark_commands.py",
    "test_capture.py",
    "test_self_measurement.py",
    "test_profiles_use_case.py",
    "test_profile_import.py",
    "test_reverification.py",
    "test_scale_bench.py",  # the scale benchmark's command, in a fresh process
    "test_mysql_rule.py",  # a pytest run in a fresh process, with and without CI=true
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        if path.parent.name in SLOW_GROUPS or path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
        if path.parent.name == "e2e":
            item.add_marker(pytest.mark.browser)


MYSQL_SERVER_URL = (
    os.environ.get("TEST_MYSQL_URL")
    or os.environ.get("FACEVERIFY_TEST_MYSQL_URL")
    or "mysql+pymysql://root@127.0.0.1:3306"
)
USER_PASSWORD = "correct horse battery staple"
# A promotion measures the new version on a thread; tests that promote do not want it (the
# self-measurement tests turn it on where they check it).
os.environ.setdefault("SELF_MEASURE_AFTER_PROMOTION", "off")
BACKENDS = ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)]


class MySQLServer:
    """Creates uniquely named databases on the test server and drops them at the end."""

    def __init__(self, server_url: str):
        from sqlalchemy import create_engine

        self.server_url = server_url.rstrip("/")
        self.admin = create_engine(self.server_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        self.prefix = f"faceverify_test_{os.getpid()}"
        self.created: list[str] = []

    def create_database(self, suffix: str = "") -> str:
        from sqlalchemy import text

        name = f"{self.prefix}{suffix}"
        with self.admin.connect() as conn:
            # Names are generated here from the pid and a counter, never from input.
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
        self.created.append(name)
        return f"{self.server_url}/{name}"

    def drop_all(self) -> None:
        from sqlalchemy import text

        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        self.admin.dispose()


@pytest.fixture(scope="session")
def mysql_server():
    from sqlalchemy import create_engine, text

    probe = create_engine(MYSQL_SERVER_URL, connect_args={"connect_timeout": 5})
    try:
        with probe.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the server
        message = f"MariaDB/MySQL test server at {MYSQL_SERVER_URL} is not reachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the MySQL tests must run, not skip)", pytrace=False)
        pytest.skip(message)
    finally:
        probe.dispose()
    server = MySQLServer(MYSQL_SERVER_URL)
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def mysql_migrated_url(mysql_server):
    """One migrated database per test session; tests get it emptied (DDL is slow on MariaDB)."""
    from core.storage.db import init_db, make_engine

    url = mysql_server.create_database()
    engine = make_engine(url)
    init_db(engine)
    engine.dispose()
    return url


def _empty_all_tables(engine) -> None:
    from sqlalchemy import delete

    from core.storage.schema import Base

    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def sqlite_migrated_file(tmp_path_factory) -> Path:
    """One SQLite file migrated to the newest revision per test session; each test gets a copy
    (copying takes milliseconds, running every migration a large part of a second)."""
    from core.storage.db import init_db, make_engine

    path = tmp_path_factory.mktemp("sqlite_migrated") / "faceverify.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    init_db(engine)
    engine.dispose()
    return path


@pytest.fixture
def db_url(backend, tmp_path, request) -> str:
    from core.storage.db import make_engine

    if backend == "sqlite":
        import sqlite3

        path = tmp_path / "faceverify.sqlite3"
        # SQLite's backup API: a consistent copy whatever its write-ahead log holds.
        with sqlite3.connect(request.getfixturevalue("sqlite_migrated_file")) as source:
            target = sqlite3.connect(path)
            source.backup(target)
            target.close()
        source.close()
        return f"sqlite:///{path}"
    url = request.getfixturevalue("mysql_migrated_url")
    engine = make_engine(url)
    _empty_all_tables(engine)
    engine.dispose()
    return url


@pytest.fixture
def db_engine(db_url):
    from core.storage.db import make_engine

    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(db_engine):
    from core.storage.db import session_factory as make_factory

    return make_factory(db_engine)


@pytest.fixture
def session(session_factory):
    with session_factory() as s:
        yield s


@pytest.fixture
def new_database_url(backend, tmp_path, request):
    """Factory for extra empty databases (no tables) of the current backend, e.g. for migrations."""
    counter = iter(range(1, 1000))

    def make() -> str:
        n = next(counter)
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'extra_{n}.sqlite3'}"
        server = request.getfixturevalue("mysql_server")
        return server.create_database(f"_{uuid.uuid4().hex[:8]}")

    return make


@pytest.fixture
def photo_store(tmp_path):
    from core.storage.photostore import PhotoStore

    return PhotoStore(tmp_path / "photo_store", fsync=False)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """One real SeaweedFS server (S3 API) per test session; skipped without it, FAILS with CI=true."""
    from objectstore import SeaweedFS

    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
    except Exception as exc:  # missing binary, no free port, did not answer in time
        server.kill()
        message = f"SeaweedFS could not be started: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the object-store tests must run, not skip)", pytrace=False)
        pytest.skip(message)
    yield server
    server.kill()


@pytest.fixture(scope="session")
def seaweedfs_bucket(seaweedfs) -> str:
    return seaweedfs.new_bucket()


@pytest.fixture
def s3_photo_store(seaweedfs, seaweedfs_bucket):
    """An S3PhotoStore on the session's SeaweedFS, under a prefix of its own (an empty store)."""
    from core.storage.s3store import S3PhotoStore

    return S3PhotoStore(seaweedfs_bucket, f"t-{uuid.uuid4().hex[:12]}", client=seaweedfs.client())


@pytest.fixture(params=["folder", pytest.param("s3", marks=pytest.mark.s3)])
def any_photo_store(request, tmp_path):
    """The photo store interface on each backend: the folder in tmp_path, then SeaweedFS."""
    if request.param == "s3":
        return request.getfixturevalue("s3_photo_store")
    from core.storage.photostore import PhotoStore

    return PhotoStore(tmp_path / "photo_store", fsync=False)


@pytest.fixture
def quick_password_hashes(monkeypatch):
    """argon2id at its lowest cost, for tests that sign in (and fail) dozens of times: at the
    product's cost (64 MiB, 3 passes) each attempt takes a tenth of a second or more. The hashes
    are argon2id all the same and every check runs as in the product; only their cost is lower.
    Use it before `users`, so their hashes are made at that cost too."""
    from argon2 import PasswordHasher

    from core.storage import users as user_store

    monkeypatch.setattr(user_store, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    user_store._dummy_hash.cache_clear()
    yield
    user_store._dummy_hash.cache_clear()


@pytest.fixture
def users(session):
    from core.storage.schema import ROLES
    from core.storage.users import create_user

    return {role: create_user(session, f"{role}_user", USER_PASSWORD, role) for role in ROLES}


SAMPLE_IMAGES = ROOT / "data" / "sample" / "images"


def jpeg_bytes(seed: int, size: tuple[int, int] = (96, 96)) -> bytes:
    """A small JPEG whose bytes differ for each seed (a face-like blob on a tinted background)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(40, 220, 3)))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse(
        (w * 0.25, h * 0.15, w * 0.75, h * 0.85), fill=tuple(int(c) for c in rng.integers(120, 255, 3))
    )
    pixels = image.load()
    pixels[seed % w, (seed // w) % h] = (seed % 256, 0, 0)  # one pixel per seed: distinct hashes
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def make_photo():
    return jpeg_bytes


def engine_result(
    status: str = "auto_approved",
    similarity: float | None = 0.9,
    *,
    same_person: bool | None = None,
    threshold: float = 0.5,
    band: tuple[float, float] = (0.4, 0.6),
    predicted_gender: str | None = "M",
    gender_confidence: float | None = 0.95,
    registered_gender: str | None = "M",
    flags: tuple[str, ...] = (),
    latency_ms: float = 100.0,
    model_version: str = "test-v1",
):
    """A core.verification.result.VerificationResult as the engine would return it, built by hand."""
    from core.verification.result import Flag, PhotoAnalysis, VerificationResult

    if same_person is None and similarity is not None:
        same_person = similarity >= threshold
    return VerificationResult(
        same_person=same_person,
        similarity=similarity,
        threshold=threshold,
        uncertain_band=band,
        predicted_gender=predicted_gender,
        gender_confidence=gender_confidence,
        registered_gender=registered_gender,
        status=status,
        flags=[Flag(code, f"{code} reason", "verification") for code in flags],
        gallery=PhotoAnalysis(sha256="a" * 64, width=250, height=250),
        verification=PhotoAnalysis(sha256="b" * 64, width=250, height=250),
        timings_ms={"decode": 1.0, "total": latency_ms},
        model_version=model_version,
    )


@pytest.fixture
def make_result():
    return engine_result


def store_member(
    session, photo_store, member_id: str, gender: str = "M", photos: tuple[bytes, bytes] | None = None
):
    """A member with a stored gallery and verification photo (photos: their bytes; default: two
    distinct synthetic photos). Commits; returns the Member. add_member is this on the test's
    own session and store; tests with another database (app_env) call it directly."""
    from core.storage.schema import GALLERY, VERIFICATION, Member, Photo, utcnow

    if photos is None:
        photos = (jpeg_bytes(next(_photo_seeds)), jpeg_bytes(next(_photo_seeds)))
    member = Member(id=member_id, gender=gender, created_at=utcnow(), updated_at=utcnow())
    session.add(member)
    for kind, data in zip((GALLERY, VERIFICATION), photos, strict=True):
        stored = photo_store.put(data)
        session.add(
            Photo(
                member_id=member_id,
                kind=kind,
                sha256=stored.sha256,
                stored_path=stored.relative_path,
                size_bytes=len(data),
                current=True,
                created_at=utcnow(),
            )
        )
    session.commit()
    return member


_photo_seeds = itertools.count(1_000_000)  # store_member's own photos: never a test's chosen seed


@pytest.fixture
def add_member(session, photo_store):
    """add_member(member_id, gender="M", seeds=None, photos=None) -> Member with a stored gallery
    and verification photo (seeds pick the photo bytes; equal seeds give the same photo; photos:
    the (gallery, verification) bytes themselves, e.g. two real sample photos)."""
    counter = itertools.count(10_000)

    def add(
        member_id: str,
        gender: str = "M",
        seeds: tuple[int, int] | None = None,
        photos: tuple[bytes, bytes] | None = None,
    ):
        if photos is None:
            gallery_seed, verification_seed = seeds or (next(counter), next(counter))
            photos = (jpeg_bytes(gallery_seed), jpeg_bytes(verification_seed))
        return store_member(session, photo_store, member_id, gender, photos)

    return add


# ----------------------------------------------------------------------------------------------
# Dashboard (tests/pages/test_pages.py, tests/e2e/test_browser.py, tests/pages/test_dashboard_*.py)
#
#     app_env          a fresh SQLite database + photo store for the Streamlit app, set through
#                      DATABASE_URL / PHOTO_STORE_DIR, with one user per role (password USER_PASSWORD)
#     dashboard_models MODELS_DIR for the app: the shipped models/
#                      made once per test session, so the pages run before the first model is trained
#     open_page        open_page(page="home", role="staff", lang=None, timeout=30) -> AppTest of the
#                      app's entry (Home.py) signed in as <role>_user (None: signed out), on the page
#                      (a key of PAGE_FILES or a path "pages/...py"), already run without exception


PAGE_FILES = {
    "home": None,  # the entry's default page
    "verify": "pages/1_Verify.py",
    "review": "pages/2_Review_Queue.py",
    "members": "pages/3_Members.py",
    "kpis": "pages/4_KPIs.py",
    "retrain": "pages/5_Retrain.py",
    "users": "pages/6_Users.py",
}


def signed_in_app(
    page: str = "home", role: str | None = "staff", lang: str | None = None, timeout: float = 30
):
    """The app as a browser signed in as <role>_user would open it: the entry first, then the page."""
    import time

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=timeout)
    if role:
        at.session_state["auth"] = {
            "username": f"{role}_user",
            "role": role,
            "display_name": None,
            "last_seen": time.time(),
        }
    if lang:
        at.session_state["lang"] = lang
    path = PAGE_FILES.get(page, page)
    if path:
        at.switch_page(path)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def open_page():
    return signed_in_app


class AppEnv:
    def __init__(self, url: str, store_dir: Path, factory, store):
        self.url, self.store_dir, self.session_factory, self.store = url, store_dir, factory, store

    def session(self):
        return self.session_factory()


@pytest.fixture(scope="session")
def dashboard_models() -> Path:
    """The shipped models/ folder (the tests run the real model)."""
    return ROOT / "models"


@pytest.fixture
def app_env(tmp_path, monkeypatch, dashboard_models) -> AppEnv:
    from core.storage.db import init_db, make_engine
    from core.storage.db import session_factory as make_factory
    from core.storage.photostore import PhotoStore
    from core.storage.schema import ROLES
    from core.storage.users import create_user

    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    store_dir = tmp_path / "app_photos"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PHOTO_STORE_DIR", str(store_dir))
    monkeypatch.setenv("MODELS_DIR", str(dashboard_models))
    monkeypatch.setenv("FACEVERIFY_WARM_ENGINE", "0")  # tests load the model only where they need it
    monkeypatch.delenv("SESSION_IDLE_MINUTES", raising=False)
    # The process remembers recent photo views (one view per user, photo id and page for a few
    # minutes); photo ids start again in each test's new database, so a view made by an earlier
    # test must not hide this test's.
    from core.workflows import privacy

    privacy._recent_views.clear()
    engine = make_engine(url)
    init_db(engine)
    factory = make_factory(engine)
    with factory() as s:
        for role in ROLES:
            create_user(s, f"{role}_user", USER_PASSWORD, role)
    yield AppEnv(url, store_dir, factory, PhotoStore(store_dir, fsync=False))
    engine.dispose()


# ----------------------------------------------------------------------------------------------
# Retraining (tests/unit/test_training.py, tests/db/test_registry.py, tests/pages/test_retrain_page.py)
#
#     models_copy      a MODELS_DIR in tmp_path holding the shipped version and
#                      DEFAULT, set in the environment: versions the tests train or register go there,
#                      never into models/
#     sample_vectors   the 120 data/sample photos' pretrained features (sha -> 129 floats; "sface": sha ->
#                      the 128 of SAMPLE_SFACE, the SFace network new versions train on), computed once
#                      per test session; warm_cache(session_factory) puts them into a test database's
#                      embedding cache so a test trains without running the networks again
#     add_reviewed     add_reviewed(session_factory, store) -> the 20 sample members imported and each
#                      decided by a reviewer (approved when the truth is same person, else rejected with
#                      the verification person's gender); returns {member_id: result_id}

SAMPLE_DIR = ROOT / "data" / "sample"


@pytest.fixture
def models_copy(tmp_path, monkeypatch, dashboard_models) -> Path:
    import shutil

    from core.verification.heads import default_version

    folder = tmp_path / "models"
    folder.mkdir()
    version = default_version(dashboard_models)
    shutil.copytree(dashboard_models / version, folder / version)
    (folder / "DEFAULT").write_text(version + "\n")
    monkeypatch.setenv("MODELS_DIR", str(folder))
    return folder


SAMPLE_SFACE = "sface8"  # TrainParams' networks: dlib, then SFace with 8-bit weights


@pytest.fixture(scope="session")
def sample_vectors() -> dict:
    from core.training import embedding_cache
    from core.training.pipeline import lfw_photos

    photos = lfw_photos(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv")
    found = embedding_cache.featurise([p.ref for p in photos], networks=("dlib", SAMPLE_SFACE))
    return {"": found.vectors[""], "failed": found.failed, "sface": found.extra[SAMPLE_SFACE]}


@pytest.fixture(scope="session")
def warm_cache(sample_vectors):
    from core.training import embedding_cache

    def warm(session_factory) -> None:
        with session_factory() as session:
            embedding_cache.store(session, sample_vectors[""], embedding_cache.model_id(""))
            embedding_cache.store(
                session, sample_vectors["sface"], embedding_cache.network_model_id(SAMPLE_SFACE), dim=128
            )
            session.commit()

    return warm


def seed_reviewed(session_factory, store) -> dict:
    """The sample members, each with one decided pair (approved when the truth says same person,
    rejected otherwise) and the reviewer's gender label: reviewed decisions to train from."""
    import csv

    from core.storage.schema import GALLERY, VERIFICATION, Member, Photo, utcnow
    from core.storage.schema import VerificationResult as ResultRow
    from core.verification.result import APPROVED, REJECTED
    from core.workflows import importer

    gender_of = {r["person"]: r["gender"] for r in csv.DictReader(open(SAMPLE_DIR / "people.csv"))}
    truth = {r["member_id"]: r for r in csv.DictReader(open(SAMPLE_DIR / "members_truth.csv"))}
    ids = {}
    with session_factory() as session:
        importer.load_sample_members(session, actor="test", photo_store=store)
        for member in session.query(Member).order_by(Member.id):
            photo = {p.kind: p for p in session.query(Photo).filter_by(member_id=member.id, current=True)}
            case = truth[member.id]
            same = case["case"] == "same_person"
            row = ResultRow(
                member_id=member.id,
                gallery_photo_id=photo[GALLERY].id,
                verification_photo_id=photo[VERIFICATION].id,
                same_person=same,
                similarity=0.5,
                threshold=0.4,
                band_low=0.1,
                band_high=0.9,
                registered_gender=member.gender,
                status=APPROVED if same else REJECTED,
                flags=[],
                model_version="test",
                ground_truth_same=same,
                ground_truth_gender=gender_of[case["verification_person"]],
                decided_at=utcnow(),
                decided_by="staff_user",
            )
            session.add(row)
            session.flush()
            ids[member.id] = row.id
        session.commit()
    return ids


@pytest.fixture
def add_reviewed():
    return seed_reviewed


@pytest.fixture
def profile_search(engine, monkeypatch):
    """The profile tests' 1:N search on their module's `engine`, fresh for each test, with the API's
    pose challenge off."""
    from core.workflows import search

    monkeypatch.setenv("CHALLENGE_REQUIRED_API", "0")
    search.reset_indexes()
    search.register_engine(engine)
    yield
    search.reset_indexes()
