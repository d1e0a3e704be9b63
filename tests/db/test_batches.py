"""Batch runner: every result committed as it is computed; a dropped connection loses nothing
and a second run resumes with only the missing items. On SQLite and on MariaDB (through a TCP
proxy the test cuts, so the connection really drops)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select, text, update

from core.storage.db import make_engine
from core.storage.db import session_factory as make_session_factory
from core.storage.schema import Batch, Member, utcnow
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import AUTO_APPROVED, AUTO_REJECTED, FLAGGED, PhotoAnalysis, VerificationResult
from core.workflows import batches


class FakeEngine:
    """Stands in for core.verification.engine.Engine (same analyze_many/compare API), counting its work."""

    model_version = "fake-v1"

    def __init__(self):
        self.analysed: list[str] = []
        self.compared = 0

    def analyze_many(self, photos):
        out = []
        for data in photos:
            sha = hashlib.sha256(data).hexdigest()
            self.analysed.append(sha)
            embedding = np.frombuffer(hashlib.sha256(data).digest(), np.uint8).astype(np.float32)
            out.append(
                PhotoAnalysis(sha256=sha, width=96, height=96, embedding=embedding, crop=np.zeros((2, 2, 3)))
            )
        return out

    def compare(self, gallery, verification, registered_gender=None):
        self.compared += 1
        similarity = int(gallery.sha256[:2], 16) / 255
        status = (
            FLAGGED if 0.4 <= similarity < 0.6 else (AUTO_APPROVED if similarity >= 0.5 else AUTO_REJECTED)
        )
        return VerificationResult(
            same_person=similarity >= 0.5,
            similarity=np.float32(similarity),  # numpy scalars, as a real engine returns them
            threshold=0.5,
            uncertain_band=(0.4, 0.6),
            predicted_gender="M",
            gender_confidence=np.float64(0.9),
            registered_gender=registered_gender,
            status=status,
            flags=[],
            gallery=gallery,
            verification=verification,
            timings_ms={"total": 20.0},
            model_version=self.model_version,
        )


def make_batch(session, add_member, n=8, shared_gallery=True):
    for i in range(n):
        # Members 0 and 1 share a gallery photo: it must be analysed once per run.
        seeds = (500, 600 + i) if shared_gallery and i < 2 else None
        add_member(f"B{i:02d}", "F" if i % 3 == 0 else "M", seeds)
    items = batches.items_for_members(session)
    assert len(items) == n
    return batches.create_batch(session, "manager_user", items, FakeEngine.model_version, source="test")


def count_results(session, batch_id):
    return session.scalar(select(func.count(ResultRow.id)).where(ResultRow.batch_id == batch_id))


def test_run_batch_stores_every_result(session, session_factory, photo_store, add_member):
    batch = make_batch(session, add_member)
    engine = FakeEngine()
    seen = []

    summary = batches.run_batch(
        session_factory,
        engine,
        batch.id,
        progress=lambda done, total, row: seen.append((done, total)),
        photo_store=photo_store,
    )

    assert (summary.processed, summary.already_done, summary.total, summary.status) == (8, 0, 8, "completed")
    assert seen == [(i, 8) for i in range(1, 9)]
    assert len(engine.analysed) == len(set(engine.analysed)) == 15  # 16 photos, one shared
    session.expire_all()
    assert count_results(session, batch.id) == 8
    stored = session.scalars(select(ResultRow).where(ResultRow.batch_id == batch.id)).all()
    assert all(r.latency_ms == 20.0 and r.model_version == "fake-v1" for r in stored)
    assert all(isinstance(r.similarity, float) and r.gallery_analysis["width"] == 96 for r in stored)
    assert {r.registered_gender for r in stored} == {"M", "F"}
    status_of = {r.member_id: r.status for r in stored}
    expected_member = {"auto_approved": "verified", "auto_rejected": "rejected", "flagged": "in_review"}
    for member in session.scalars(select(Member)):
        assert member.status == expected_member[status_of[member.id]]
    assert session.get(Batch, batch.id).status == "completed"

    again = batches.run_batch(session_factory, FakeEngine(), batch.id, photo_store=photo_store)
    assert (again.processed, again.already_done) == (0, 8)


def test_batch_already_running_is_refused(session, session_factory, photo_store, add_member):
    batch = make_batch(session, add_member, n=2)
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id)
        .values(status="running", heartbeat_at=utcnow(), run_token="x")
    )
    session.commit()

    with pytest.raises(batches.BatchAlreadyRunning, match="already running"):
        batches.run_batch(session_factory, FakeEngine(), batch.id, photo_store=photo_store)

    # A runner whose heartbeat is older than stale_after is presumed dead and taken over.
    session.execute(
        update(Batch).where(Batch.id == batch.id).values(heartbeat_at=utcnow() - timedelta(hours=1))
    )
    session.commit()
    summary = batches.run_batch(session_factory, FakeEngine(), batch.id, photo_store=photo_store)
    assert summary.processed == 2


def test_wrong_model_version_and_missing_batch(session, session_factory, photo_store, add_member):
    batch = make_batch(session, add_member, n=1)
    other = FakeEngine()
    other.model_version = "fake-v2"
    with pytest.raises(batches.BatchError, match="created for model fake-v1"):
        batches.run_batch(session_factory, other, batch.id, photo_store=photo_store)
    with pytest.raises(batches.BatchNotFound):
        batches.run_batch(session_factory, FakeEngine(), 999_999, photo_store=photo_store)


def test_missing_photo_file_becomes_a_flagged_result(session, session_factory, photo_store, add_member):
    batch = make_batch(session, add_member, n=1, shared_gallery=False)
    for path in photo_store.root.rglob("*.jpg"):
        path.unlink()

    class CarefulEngine(FakeEngine):
        def compare(self, gallery, verification, registered_gender=None):
            result = super().compare(gallery, verification, registered_gender)
            if gallery.error or verification.error:
                result.status, result.similarity, result.same_person = FLAGGED, None, None
                result.flags = gallery.flags + verification.flags
            return result

    batches.run_batch(session_factory, CarefulEngine(), batch.id, photo_store=photo_store)
    row = session.scalars(select(ResultRow)).one()
    assert row.status == "flagged" and row.flags[0]["code"] == "bad_image"
    assert "missing from the photo store" in row.flags[0]["reason"]


class TcpProxy:
    """A TCP relay to the database server that the test can cut, like a network failure."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.blocked = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.blocked:
                client.close()  # the server "is gone": connections die during the handshake
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.blocked = True
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.sockets.clear()

    def restore(self):
        self.blocked = False

    def close(self):
        self.cut()
        self.listener.close()


@pytest.fixture
def droppable_session_factory(backend, db_url, db_engine):
    """(session_factory, cut, restore): cut() makes every database call fail like a lost server."""
    if backend == "mysql":
        url = db_engine.url
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 3306)
        engine = make_engine(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
        yield make_session_factory(engine), proxy.cut, proxy.restore
        engine.dispose()
        proxy.close()
        return

    import sqlite3

    from sqlalchemy import event

    engine = make_engine(db_url)
    state = {"cut": False}

    @event.listens_for(engine, "before_cursor_execute")
    def fail_when_cut(*_args):
        if state["cut"]:
            raise sqlite3.OperationalError("unable to open database file")

    yield make_session_factory(engine), lambda: state.update(cut=True), lambda: state.update(cut=False)
    engine.dispose()


def test_dropped_connection_keeps_finished_results_and_resumes(
    session, photo_store, add_member, droppable_session_factory
):
    factory, cut, restore = droppable_session_factory
    batch = make_batch(session, add_member, n=10)
    cut_after = 4

    def progress(done, total, row):
        if done == cut_after:
            cut()

    first_engine = FakeEngine()
    with pytest.raises(batches.BatchInterrupted) as caught:
        batches.run_batch(factory, first_engine, batch.id, progress=progress, photo_store=photo_store)
    interrupted = caught.value
    assert (interrupted.done, interrupted.remaining) == (cut_after, 10 - cut_after)
    assert "run the batch again" in str(interrupted)

    restore()
    session.expire_all()
    assert count_results(session, batch.id) == cut_after, "every result finished before the drop is kept"
    # The database never heard that the run stopped; only the same caller may resume at once.
    with pytest.raises(batches.BatchAlreadyRunning):
        batches.run_batch(factory, FakeEngine(), batch.id, photo_store=photo_store)

    second_engine = FakeEngine()
    summary = batches.run_batch(
        factory, second_engine, batch.id, photo_store=photo_store, resume_token=interrupted.token
    )

    assert (summary.processed, summary.already_done, summary.status) == (
        10 - cut_after,
        cut_after,
        "completed",
    )
    assert second_engine.compared == 10 - cut_after, "finished items are not redone"
    session.expire_all()
    assert count_results(session, batch.id) == 10
    item_ids = session.scalars(select(ResultRow.batch_item_id).where(ResultRow.batch_id == batch.id)).all()
    assert len(set(item_ids)) == 10


@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)])
def test_killed_connection_between_results_is_replaced(
    backend, session, session_factory, photo_store, add_member, db_url
):
    """KILL from another connection: pool_pre_ping notices and reconnects, the run completes."""
    batch = make_batch(session, add_member, n=6)
    killed = []
    admin_engine = make_engine(db_url)  # its own pool, so it does not reuse the runner's connection

    def progress(done, total, row):
        if done == 3:
            with admin_engine.connect() as admin:
                me = admin.execute(text("SELECT CONNECTION_ID()")).scalar()
                ids = (
                    admin.execute(
                        text(
                            "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> :me"
                        ),
                        {"me": me},
                    )
                    .scalars()
                    .all()
                )
                for connection_id in ids:
                    admin.execute(text("KILL :id"), {"id": connection_id})
                    killed.append(connection_id)

    summary = batches.run_batch(
        session_factory, FakeEngine(), batch.id, progress=progress, photo_store=photo_store
    )
    admin_engine.dispose()
    assert killed and summary.processed == 6
    session.expire_all()
    assert count_results(session, batch.id) == 6


@pytest.fixture(scope="session")
def real_engine():
    """core.verification.engine.Engine with the shipped model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from core.verification.engine import Engine

    return Engine.load()


def test_real_engine_batch_resumes_after_drop(session, photo_store, droppable_session_factory, real_engine):
    from core.config import SAMPLE_DIR
    from core.workflows.importer import import_members

    factory, cut, restore = droppable_session_factory
    reports = import_members(session, SAMPLE_DIR / "members.csv", photo_store=photo_store)
    items = batches.items_for_members(session)[:6]
    assert len(items) == 6, reports
    batch = batches.create_batch(session, "manager_user", items, real_engine.model_version)

    def progress(done, total, row):
        if done == 3:
            cut()

    with pytest.raises(batches.BatchInterrupted) as caught:
        batches.run_batch(factory, real_engine, batch.id, progress=progress, photo_store=photo_store)
    restore()
    session.expire_all()
    assert count_results(session, batch.id) == 3
    summary = batches.run_batch(
        factory, real_engine, batch.id, photo_store=photo_store, resume_token=caught.value.token
    )
    assert (summary.processed, summary.already_done) == (3, 3)
    stored = session.scalars(select(ResultRow).where(ResultRow.batch_id == batch.id)).all()
    assert len(stored) == 6
    assert all(r.model_version == real_engine.model_version and r.latency_ms is not None for r in stored)
    assert all(r.gallery_analysis["faces"] and r.verification_analysis["faces"] for r in stored)
    assert all(
        "embed" in r.timings and r.status in ("auto_approved", "auto_rejected", "flagged") for r in stored
    )
