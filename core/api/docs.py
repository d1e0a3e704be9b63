"""The API's own description: /openapi.json, Swagger UI at /docs and ReDoc at /redoc.

They hold no data (the endpoints, their inputs and their answers), so they answer without a key,
like /health. API_DOCS=off (setting) turns all three off, for a deployment that prefers not to
describe itself to strangers.

The pages work without internet: Swagger UI and ReDoc are served from the files installed with
the project (the fastapi-offline package ships them), under /docs-files/, never from a CDN; the
pages load no web fonts.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from core import config

OPENAPI_URL, DOCS_URL, REDOC_URL, FILES_URL = "/openapi.json", "/docs", "/redoc", "/docs-files"
SETTING = "API_DOCS"


def docs_enabled() -> bool:
    return config.get(SETTING)


def _files_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def add_docs(app: FastAPI) -> None:
    """Serve Swagger UI and ReDoc from the installed files (the app is made with docs_url=None)."""
    app.mount(FILES_URL, StaticFiles(directory=_files_dir()), name="docs-files")
    title = app.title

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{FILES_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{FILES_URL}/swagger-ui.css",
            swagger_favicon_url=f"{FILES_URL}/favicon.png",
        )

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=OPENAPI_URL,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{FILES_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{FILES_URL}/favicon.png",
            with_google_fonts=False,
        )
