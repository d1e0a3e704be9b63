"""Import members from an .xlsx or .csv file: member_id, gender, gallery_photo, verification_photo.

import_members(session, rows_source, zip_bytes=None, base_dir=None, actor="system", ...)
    -> list[RowReport]      one per data row: imported / updated / unchanged / rejected + message
                            (notes: catalog keys and values; .message is the English text,
                            .message_in(lang) the page's language)
load_sample_members(session) -> list[RowReport]    the demo members in data/sample/members.csv

Each photo is a local path (relative to the file's folder or base_dir), a path inside the photo
ZIP, or an http(s) link. The whole file is checked first (columns, duplicate IDs); then every row is
validated completely (both photos fetched and decoded) before its own transaction writes the
member and both photos, so a row is imported entirely or not at all. Importing the same file again
changes nothing.

Command line:
    faceverify import FILE [--zip PHOTOS.zip] [--base-dir DIR] [--url DATABASE_URL]
"""

from core.i18n.notes import Note
from core.verification.genders import normalise_gender  # the pages and the API import it from here
from core.workflows.importer.members import format_report, import_members, load_sample_members, summarize
from core.workflows.importer.photos import (
    MAX_PHOTO_BYTES,
    MAX_ZIP_ENTRIES,
    PhotoLoader,
    PhotoRefError,
    PhotoZip,
    fetch_url,
)
from core.workflows.importer.rows import (
    IMPORTED,
    PREFETCH_WORKERS,
    REJECTED,
    UNCHANGED,
    UPDATED,
    RowReport,
)
from core.workflows.importer.table import (
    EXPECTED_COLUMNS,
    MAX_ROWS,
    MAX_TABLE_BYTES,
    MAX_XLSX_UNPACKED_BYTES,
    OPTIONAL_COLUMNS,
    PHOTO_COLUMNS,
    ImportFileError,
    check_columns,
    gallery_references,
    read_table,
)

__all__ = [
    "EXPECTED_COLUMNS",
    "IMPORTED",
    "MAX_PHOTO_BYTES",
    "MAX_ROWS",
    "MAX_TABLE_BYTES",
    "MAX_XLSX_UNPACKED_BYTES",
    "MAX_ZIP_ENTRIES",
    "OPTIONAL_COLUMNS",
    "PHOTO_COLUMNS",
    "PREFETCH_WORKERS",
    "REJECTED",
    "UNCHANGED",
    "UPDATED",
    "ImportFileError",
    "Note",
    "PhotoLoader",
    "PhotoRefError",
    "PhotoZip",
    "RowReport",
    "check_columns",
    "fetch_url",
    "format_report",
    "gallery_references",
    "import_members",
    "load_sample_members",
    "normalise_gender",
    "read_table",
    "summarize",
]
