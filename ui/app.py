"""The dashboard's server: Streamlit's own (`Home.py` and its pages, over st.App) plus one route of
ours, the one-time downloads (core.dashboard.downloads), so a file built for a signed-in user never
gets a Streamlit /media address. `python -m ui.serve` (run.sh) runs `streamlit run ui/app.py`.

GET /dashboard-download/<code>: the file, once, to the browser whose sign-in cookie (ui.auth.COOKIE)
is the sign-in the file was made for, while it holds and its role may open the page that made it;
otherwise 403 with no detail (the reason goes to the log).

POST /dashboard-cookie/<code>: sets (or clears) the sign-in cookie the page offered under that code
(core.dashboard.cookies), HttpOnly, SameSite=Strict, Path=/, Secure over https; 403 for a code
unknown, used or expired.
"""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route
from streamlit.starlette import App

from core import config
from core.dashboard import cookies, downloads
from ui import resources
from ui.auth import COOKIE

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


def download(request: Request) -> Response:
    code = request.path_params["code"]
    try:
        with resources.get_session_factory()() as session:
            offered = downloads.take(
                session, code, request.cookies.get(COOKIE), config.get("SESSION_IDLE_MINUTES")
            )
    except downloads.Refused as exc:
        log.warning("dashboard download refused: %s", exc.reason)
        return PlainTextResponse("Forbidden", status_code=403, headers={"Cache-Control": "no-store"})
    return FileResponse(
        offered.path,
        media_type=offered.media_type,
        filename=offered.filename,
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(offered.path.unlink, missing_ok=True),
    )


def set_cookie(request: Request) -> Response:
    found = cookies.take(request.path_params["code"])
    if found is None:
        return PlainTextResponse("Forbidden", status_code=403, headers={"Cache-Control": "no-store"})
    value, max_age = found
    secure = request.url.scheme == "https" or request.query_params.get("https") == "1"
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        COOKIE, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="strict"
    )
    return response


ROUTES = [
    Route(downloads.DOWNLOAD_ROUTE + "/{code}", download, methods=["GET"]),
    Route(cookies.COOKIE_ROUTE + "/{code}", set_cookie, methods=["POST"]),
]

app = App(str(ROOT / "Home.py"), routes=ROUTES)
