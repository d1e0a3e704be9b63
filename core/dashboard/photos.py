"""Photos on screen: the photo as the engine saw it with its face boxes, the aligned crop, and the
similarity bar of a pair (Verify and the review queue).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from core.errors import ImageError
from core.i18n import t
from core.verification.imaging import decode_image
from core.verification.result import Face, PhotoAnalysis

MAIN_BOX = (22, 163, 74)  # green: the face that was used


OTHER_BOX = (234, 88, 12)  # orange: other faces the detector found


def faces_of(analysis: PhotoAnalysis | dict | None) -> tuple[list[tuple[int, int, int, int]], int | None]:
    if analysis is None:
        return [], None
    if isinstance(analysis, PhotoAnalysis):
        return [tuple(f.box) for f in analysis.faces], analysis.main_face
    return [tuple(f["box"]) for f in analysis.get("faces") or []], analysis.get("main_face")


def annotate_photo(data: bytes, analysis: PhotoAnalysis | dict | None) -> Image.Image | None:
    """The photo as the engine saw it (EXIF-rotated, scaled) with the face boxes drawn on it.

    None when the bytes are not a usable photo (the flag says why).
    """
    try:
        decoded = decode_image(data)
    except ImageError:
        return None
    image = Image.fromarray(decoded.rgb)
    boxes, main = faces_of(analysis)
    if boxes:
        draw = ImageDraw.Draw(image)
        width = max(2, round(max(image.size) / 150))
        for i, (x, y, w, h) in enumerate(boxes):
            color = MAIN_BOX if i == main else OTHER_BOX
            draw.rectangle((x, y, x + w, y + h), outline=color, width=width)
    return image


def chip_image(chip: np.ndarray | None) -> Image.Image | None:
    return None if chip is None else Image.fromarray(np.asarray(chip, dtype=np.uint8))


def crop_from_analysis(data: bytes, analysis: dict | None) -> Image.Image | None:
    """Re-make the aligned chip of a stored result (chips are not stored) from its main face box."""
    if not analysis or analysis.get("main_face") is None or not analysis.get("faces"):
        return None
    from core.verification import faces as face_ops

    try:
        decoded = decode_image(data)
        raw = analysis["faces"][analysis["main_face"]]
        face = Face(box=tuple(raw["box"]), score=raw.get("score", 0.0), keypoints=raw.get("keypoints") or [])
        return chip_image(face_ops.align_face(decoded.rgb, face).chip)
    except (ImageError, IndexError, KeyError, RuntimeError):
        return None


def similarity_figure(similarity: float | None, threshold: float, band: tuple[float, float], lang: str):
    """A horizontal 0..1 bar: the similarity, the threshold and the uncertain band behind it."""
    import plotly.graph_objects as go

    value = similarity or 0.0
    same = similarity is not None and similarity >= threshold
    fig = go.Figure(
        go.Bar(
            x=[value],
            y=[""],
            orientation="h",
            marker_color="#16a34a" if same else "#dc2626",
            text=[f"{value:.3f}" if similarity is not None else "—"],
            textposition="inside",
            insidetextanchor="end",
            textfont={"size": 18, "color": "white"},
            hoverinfo="skip",
        )
    )
    fig.add_vrect(x0=band[0], x1=band[1], fillcolor="#facc15", opacity=0.25, line_width=0)
    fig.add_vline(
        x=threshold,
        line_width=3,
        line_color="#111827",
        annotation_text=t("verify.threshold_mark", lang, value=threshold),
        annotation_position="top",
    )
    fig.update_layout(
        height=120,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"range": [0, 1], "tickformat": ".1f"},
        showlegend=False,
    )
    return fig


INLINE_MAX_SIDE = 1280  # wider than any column the pages draw a photo in
INLINE_QUALITY = 88


def inline_image(image: bytes | Image.Image | np.ndarray) -> str | None:
    """The photo as a data: URI (JPEG, EXIF dropped, at most INLINE_MAX_SIDE px a side).

    The pages hand member photos to the browser inline, inside the signed-in session's own
    messages: Streamlit's /media/<id> address for an image answers anyone who has the link, for as
    long as the server keeps it. None when the bytes are not a photo."""
    import base64
    import io

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        try:
            image = Image.fromarray(decode_image(image).rgb)
        except ImageError:
            return None
    image = image.convert("RGB")
    if max(image.size) > INLINE_MAX_SIDE:
        image.thumbnail((INLINE_MAX_SIDE, INLINE_MAX_SIDE))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=INLINE_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")
