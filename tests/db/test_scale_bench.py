"""The scale benchmark at 2,000 members, so it cannot rot: it fills the product's schema and times
every page and the API."""

from __future__ import annotations

import json
import subprocess
import sys

from sqlalchemy import func, select

from core.storage import audit, db
from core.storage.schema import Member, Photo, Review
from core.storage.schema import VerificationResult as ResultRow

MEMBERS = 2000


def test_the_scale_benchmark_fills_and_times(new_database_url, tmp_path):
    from conftest import ROOT

    url = new_database_url()
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "bench",
            "scale",
            "--members",
            str(MEMBERS),
            "--url",
            url,
            "--runs",
            "1",
        ]
        + ["--store", str(tmp_path / "store"), "--api-calls", "5", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(out.read_text())
    assert report["fill"]["members"] == MEMBERS and report["fill"]["results"] == 3 * MEMBERS
    for page in (
        "home",
        "kpis.first_load_30_days",
        "kpis.year_per_day",
        "retrain.first_load",
        "users.first_load",
    ):
        assert 0 < report["pages"][page] < 60
    # The API on the filled database: verifications of known members, histories, 1:N searches.
    api = report["api"]
    assert api["calls_each"] == 5 and api["errors"] == {}, api
    for name in ("verification", "member_history", "search_1n"):
        assert 0 < api[f"{name}_p50_ms"] <= api[f"{name}_p95_ms"] <= api[f"{name}_max_ms"] < 60_000
    assert api["member_history_query_p95_ms"] > 0
    assert report["index_rows"] == MEMBERS  # every member's gallery photo, in the dashboard's 1:N index
    assert report["peak_rss_mb"]["dashboard (this process)"] > 50 and report["peak_rss_mb"]["api"] > 50
    engine = db.make_engine(url)
    try:
        with db.session_factory(engine)() as session:
            assert session.scalar(select(func.count()).select_from(Member)) == MEMBERS
            assert (
                session.scalar(select(func.count()).select_from(Photo)) == 2 * MEMBERS + 5
            )  # the API's selfies
            assert session.scalar(select(func.count()).select_from(ResultRow)) == 3 * MEMBERS + 5
            reviews = session.scalar(select(func.count()).select_from(Review))
            decided = session.scalar(
                select(func.count()).select_from(ResultRow).where(ResultRow.decided_by.is_not(None))
            )
            assert reviews == decided
            # The chain the fill wrote through the product is intact (one entry per import and decision).
            chain = audit.verify_chain(session)
            assert chain.ok and chain.checked >= MEMBERS + reviews, chain.summary()
    finally:
        engine.dispose()
