"""Photos on screen: face boxes and crops (core.dashboard.photos)."""

from __future__ import annotations

from conftest import ROOT
from PIL import Image

from core.dashboard import photos

SAMPLE = ROOT / "data" / "sample" / "images"


def test_annotate_photo_draws_the_boxes():
    data = (SAMPLE / "John_Howard_0014.jpg").read_bytes()
    analysis = {"faces": [{"box": [60, 60, 100, 120]}, {"box": [5, 5, 30, 30]}], "main_face": 0}
    image = photos.annotate_photo(data, analysis)
    assert isinstance(image, Image.Image) and image.size == (250, 250)
    assert image.getpixel((60, 100)) == photos.MAIN_BOX and image.getpixel((5, 20)) == photos.OTHER_BOX
    assert photos.annotate_photo(b"not a photo", analysis) is None
    assert photos.crop_from_analysis(data, None) is None
