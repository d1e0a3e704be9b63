"""/docs and /redoc work offline: every file they load is served by the API itself; /openapi.json
and the pages answer without a key (they hold no data) unless API_DOCS=off."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from core.api import create_app
from core.storage.photostore import PhotoStore

REFERENCE = re.compile(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]|url\s*:\s*['"]([^'"]+)['"]""")


@pytest.fixture
def api(session_factory, tmp_path):
    def make():
        app = create_app(
            session_factory, photo_store=PhotoStore(tmp_path / "p", fsync=False), load_engine=False
        )
        return TestClient(app)

    return make


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_local_files_and_each_answers(api, page):
    with api() as client:
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        urls = [a or b for a, b in REFERENCE.findall(html.text)]
        assert any(u.endswith(".js") for u in urls), urls
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
            r = client.get(url)
            assert r.status_code == 200 and r.content, url
        assert "http://" not in html.text and "https://" not in html.text, html.text
        assert "openapi" in client.get("/openapi.json").json()  # no key needed


def test_docs_can_be_switched_off(api, monkeypatch):
    monkeypatch.setenv("API_DOCS", "off")
    with api() as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs-files/swagger-ui-bundle.js"):
            assert client.get(path).status_code == 404, path
        assert client.get("/health").status_code in (200, 503)
