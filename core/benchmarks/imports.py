"""Import benchmark: N members with 2N distinct photos into a fresh database, timed.

    faceverify bench imports [--members 1000] [--url URL] [--keep]

The photos are the sample LFW photos (data/sample/images) with a few pixels changed per copy, so
every photo is a real-looking JPEG with its own hash. The table (CSV with local paths) and the
photos are prepared first and not timed; the import is timed end to end (reading, decoding and
hashing every photo, writing the photo store, one transaction per member), then timed again as a
re-import that must change nothing.

Default URL: mysql+pymysql://root@127.0.0.1:3306/faceverify_bench. For MySQL the benchmark drops
and creates that database, so its name must contain "bench"; for SQLite it uses a fresh file.
"""

from __future__ import annotations

import io
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from core import config
from core.storage.db import init_db, make_engine, session_factory
from core.storage.photostore import PhotoStore
from core.storage.schema import Member, Photo
from core.workflows.importer import REJECTED, import_members, summarize

DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/faceverify_bench"
TARGET_SECONDS = 60.0


def _photo_variant(base: bytes, k: int) -> bytes:
    """The base JPEG with a few pixels changed, re-encoded: same look, distinct bytes."""
    from PIL import Image

    image = Image.open(io.BytesIO(base)).convert("RGB")
    width, height = image.size
    pixels = image.load()
    for j in range(4):
        x, y = (k * 7 + j * 31) % width, (k * 13 + j * 17) % height
        pixels[x, y] = ((k >> (j * 2)) & 255, (k * 3 + j) & 255, (k * 5) & 255)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)
    return out.getvalue()


def prepare(folder: Path, n_members: int) -> Path:
    """Write members.csv and 2 * n_members photos into folder; returns the CSV path."""
    sample = sorted((config.SAMPLE_DIR / "images").glob("*.jpg"))
    if not sample:
        raise SystemExit(f"No sample photos in {config.SAMPLE_DIR / 'images'}.")
    bases = [p.read_bytes() for p in sample]
    photos_dir = folder / "photos"
    photos_dir.mkdir(parents=True)

    def write(k: int) -> None:
        (photos_dir / f"{k:06d}.jpg").write_bytes(_photo_variant(bases[k % len(bases)], k))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, range(2 * n_members)))
    lines = ["member_id,gender,gallery_photo,verification_photo"]
    for i in range(n_members):
        gender = ("M", "F", "남", "여성")[i % 4]  # mixed forms, as real files have them
        lines.append(f"BM{i:06d},{gender},photos/{2 * i:06d}.jpg,photos/{2 * i + 1:06d}.jpg")
    csv_path = folder / "members.csv"
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path


def fresh_database(url: str, folder: Path) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite:///{folder / 'bench.sqlite3'}" if not parsed.database else url
    name = parsed.database
    if not name or "bench" not in name or not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise SystemExit(
            f"Refusing to drop and recreate database {name!r}: its name must contain 'bench' and "
            "only letters, digits and underscores."
        )
    server = create_engine(parsed.set(database=""), isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        # Identifiers cannot be bound parameters; the name was checked to be [A-Za-z0-9_]+ above.
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    server.dispose()
    return url


def drop_database(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" or not re.fullmatch(r"[A-Za-z0-9_]+", parsed.database or ""):
        return
    server = create_engine(parsed.set(database=""), isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{parsed.database}`"))
    server.dispose()


def measure(members: int = 1000, url: str = DEFAULT_URL, keep: bool = False) -> bool:
    """Import `members` generated members twice into a fresh database; prints the figures, and
    whether the import met its target with nothing rejected and the second import unchanged."""

    with tempfile.TemporaryDirectory(prefix="faceverify-bench-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        csv_path = prepare(folder, members)
        print(f"prepared {members} members, {2 * members} photos in {time.perf_counter() - start:.1f} s")

        url = fresh_database(url, folder)
        engine = make_engine(url)
        init_db(engine)
        store = PhotoStore(folder / "store")
        shown = engine.url.render_as_string(hide_password=True)
        try:
            with session_factory(engine)() as session:
                start = time.perf_counter()
                reports = import_members(session, csv_path, photo_store=store, actor="benchmark")
                seconds = time.perf_counter() - start
                counts = summarize(reports)
                n_members = session.scalar(select(func.count()).select_from(Member))
                n_photos = session.scalar(select(func.count()).select_from(Photo))
                n_files = sum(1 for _ in store.root.rglob("*.jpg"))

                start = time.perf_counter()
                again = summarize(import_members(session, csv_path, photo_store=store, actor="benchmark"))
                reimport_seconds = time.perf_counter() - start
        finally:
            engine.dispose()
            if not keep:
                drop_database(url)

    print(f"database: {shown}")
    print(
        f"import:    {seconds:.1f} s for {len(reports)} members and {2 * len(reports)} photos "
        f"({len(reports) / seconds:.0f} members/s, {2 * len(reports) / seconds:.0f} photos/s)"
    )
    print(f"           {counts}; stored {n_members} members, {n_photos} photo rows, {n_files} photo files")
    print(f"re-import: {reimport_seconds:.1f} s, {again}")
    ok = seconds <= TARGET_SECONDS and counts[REJECTED] == 0 and again["unchanged"] == len(reports)
    print(f"target <= {TARGET_SECONDS:.0f} s: {'met' if ok else 'NOT met'}")
    return ok
