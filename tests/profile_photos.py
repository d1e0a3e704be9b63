"""Real sample photos for the profile tests: one photo, a group photo made of several side by side,
a member enrolled with a selfie and profile photos, and the 1:N search on the test's engine
(`profile_search`, a fixture in conftest.py)."""

from __future__ import annotations

import io

from PIL import Image

from core.config import SAMPLE_DIR

IMAGES = SAMPLE_DIR / "images"


def _path(name: str):
    return IMAGES / (name if name.endswith(".jpg") else f"{name}.jpg")


def photo(name: str) -> bytes:
    """A sample photo's bytes, by its file name with or without .jpg."""
    return _path(name).read_bytes()


def group_photo(names: list[str], scale: dict[int, float] | None = None) -> tuple[bytes, list[tuple]]:
    """Real photos side by side (tile n scaled by scale[n]), as a JPEG, and each tile's box."""
    tiles = []
    for n, name in enumerate(names):
        image = Image.open(_path(name)).convert("RGB")
        factor = (scale or {}).get(n, 1.0)
        tiles.append(image.resize((int(image.width * factor), int(image.height * factor))))
    canvas = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), (90, 90, 90))
    boxes, x = [], 0
    for tile in tiles:
        y = (canvas.height - tile.height) // 2
        canvas.paste(tile, (x, y))
        boxes.append((x, y, tile.width, tile.height))
        x += tile.width
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=92)
    return buffer.getvalue(), boxes


def enrol(factory, store, engine, member_id, selfie, photos, gender="M"):
    """A new member verified with a selfie against a profile of these photos (bytes)."""
    from core.workflows import profiles
    from core.workflows.verification import PhotoInput

    return profiles.verify_profile_member(
        factory,
        store,
        "staff",
        member_id,
        PhotoInput("verification", selfie),
        [PhotoInput("gallery", p) for p in photos],
        engine,
        gender=gender,
    )
