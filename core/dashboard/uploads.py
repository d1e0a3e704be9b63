"""What the upload widgets accept and the check of a batch upload before anything is written.

PHOTO_TYPES, MANIFEST_TYPES, MAX_BATCH_PAIRS, check_batch_upload(manifest, name, zip_bytes), manifest_template()
UPLOAD_KINDS, uploader_help(kind, lang): each upload widget's types, limit and help in the page's language
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import ImageError
from core.i18n import t
from core.verification.imaging import decode_image
from core.workflows import importer

PHOTO_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]


MANIFEST_TYPES = ["csv", "xlsx"]


MAX_BATCH_PAIRS = 5000  # per page upload; bigger jobs go through the command line

# What each kind of upload widget takes: file types and the per-file limit in MB (the same limits
# the importer and the decoder enforce; the ZIP's is the server's maxUploadSize).
UPLOAD_KINDS = {
    "photo": (PHOTO_TYPES, importer.MAX_PHOTO_BYTES // (1024 * 1024)),
    "table": (MANIFEST_TYPES, importer.MAX_TABLE_BYTES // (1024 * 1024)),
    "zip": (["zip"], 200),
}


def uploader_help(kind: str, lang: str) -> str:
    """The upload widget's help text in the page's language: how to add a file, which types, the
    limit. Streamlit 1.60 draws its drop zone's words in English only (README, "Korean")."""
    types, limit_mb = UPLOAD_KINDS[kind]
    return t("upload.help", lang, types=", ".join(ext.upper() for ext in types), mb=limit_mb)


@dataclass
class UploadCheck:
    """The result of checking a manifest and its ZIP before anything is written."""

    rows: int = 0
    problems: list[tuple[str, dict]] = field(default_factory=list)  # (i18n key, params)

    @property
    def ok(self) -> bool:
        return not self.problems and self.rows > 0


def check_batch_upload(manifest: bytes, manifest_name: str, zip_bytes: bytes | None) -> UploadCheck:
    """Every problem of the upload at once, writing nothing: an unreadable or empty ZIP, a
    manifest with wrong columns, duplicate or empty member IDs, unknown genders, photos named in
    the manifest but not in the ZIP, and ZIP entries that are not usable photos.
    """
    check = UploadCheck()
    if not zip_bytes:
        check.problems.append(("batch.zip_missing", {}))
        return check
    try:
        columns, table = importer.read_table(manifest, manifest_name)
        importer.check_columns(columns)
    except importer.ImportFileError as exc:
        check.problems.extend(("batch.manifest_problem", {"detail": p}) for p in exc.problems)
        return check
    if not table:
        check.problems.append(("batch.manifest_empty", {}))
        return check
    if len(table) > MAX_BATCH_PAIRS:
        check.problems.append(("batch.too_many", {"rows": len(table), "limit": MAX_BATCH_PAIRS}))
        return check
    check.rows = len(table)
    try:
        photo_zip = importer.PhotoZip(zip_bytes)
    except importer.ImportFileError as exc:
        check.problems.append(("batch.zip_unreadable", {"detail": str(exc)}))
        return check
    try:
        if not photo_zip.entries:
            check.problems.append(("batch.zip_empty", {}))
            return check
        seen: dict[str, int] = {}
        checked: dict[str, str | None] = {}
        for row_number, values in table:
            member_id = (values.get("member_id") or "").strip()
            if not member_id:
                check.problems.append(("batch.row_no_member", {"row": row_number}))
            elif member_id in seen:
                check.problems.append(
                    (
                        "batch.row_duplicate",
                        {"row": row_number, "member": member_id, "first": seen[member_id]},
                    )
                )
            else:
                seen[member_id] = row_number
            try:
                importer.normalise_gender(values.get("gender"))
            except ValueError:
                check.problems.append(
                    ("batch.row_gender", {"row": row_number, "value": values.get("gender", "")})
                )
            for column in importer.PHOTO_COLUMNS:
                reference = (values.get(column) or "").strip()
                if not reference:
                    check.problems.append(("batch.row_photo_empty", {"row": row_number, "column": column}))
                    continue
                try:
                    info = photo_zip.find(reference)
                except importer.PhotoRefError as exc:
                    check.problems.append(("batch.row_photo_bad", {"row": row_number, "detail": str(exc)}))
                    continue
                if info is None:
                    check.problems.append(("batch.row_photo_missing", {"row": row_number, "name": reference}))
                    continue
                if info.filename not in checked:
                    try:
                        decode_image(photo_zip.read(info, reference))
                        checked[info.filename] = None
                    except (ImageError, importer.PhotoRefError) as exc:
                        checked[info.filename] = str(exc)
                if checked[info.filename] is not None:
                    check.problems.append(
                        (
                            "batch.row_photo_unusable",
                            {"row": row_number, "name": reference, "detail": checked[info.filename]},
                        )
                    )
    finally:
        photo_zip.close()
    return check


def manifest_template() -> bytes:
    text = (
        ",".join(importer.EXPECTED_COLUMNS) + "\nM1001,F,photos/M1001_gallery.jpg,photos/M1001_verify.jpg\n"
    )
    return text.encode("utf-8-sig")
