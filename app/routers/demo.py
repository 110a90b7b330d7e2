"""The browser demo at `/demo` and the development-token endpoint it calls.

On in development; in production only the page, with DEMO_ENABLED=true, and never the tokens.
`/demo` is the collaborative editor (Yjs over /yjs/) once its bundle is built (`make run` does it
when Node is there; DEMO_BUNDLE), else the classic page, which is always at `/demo/classic`.
"""

from __future__ import annotations

import asyncio
import json
import re
from functools import cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends
from jose import jwt
from pydantic import BaseModel
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from app.admission.auth import issue_token
from app.admission.gatekeeper import PROJECT_ID
from app.errors import Refusal
from app.routers.deps import container_of
from app.settings import Settings

USER_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
TOKEN_TTL = 3600.0
MAX_BODY_BYTES = 4096
HTML = "text/html; charset=utf-8"
JAVASCRIPT = "text/javascript; charset=utf-8"

# Each page loads nothing but its own two files (the editor's script bundles Yjs and its
# provider) and talks only to this origin, so the policy can forbid everything else, inline
# scripts included. connect-src 'self' covers the same-origin ws:// and wss:// URLs too.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(tags=["demo"], include_in_schema=False)


class DemoToken(BaseModel):
    token: str
    expires_at: int


def _settings(connection: HTTPConnection) -> Settings:
    settings: Settings = container_of(connection).settings()
    return settings


SettingsDep = Annotated[Settings, Depends(_settings)]


def _not_found() -> Refusal:
    # The same answer as an unknown path, so a disabled demo does not announce itself.
    return Refusal("not_found", "Not Found", status=404)


def _page_enabled(settings: Settings) -> None:
    if settings.is_production and not settings.demo_enabled:
        raise _not_found()


@cache
def _static(name: str) -> bytes:
    return resources.files("app").joinpath("static", name).read_bytes()


def _asset(settings: Settings, name: str, media_type: str) -> Response:
    _page_enabled(settings)
    return Response(_static(name), media_type=media_type, headers=SECURITY_HEADERS)


def _bundle(settings: Settings) -> bytes | None:
    # Read at each request: `make run` may rebuild it while the server runs; demo traffic only.
    try:
        return settings.demo_bundle.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


@router.get("/demo")
async def demo_page(settings: SettingsDep) -> Response:
    _page_enabled(settings)
    # Without Node there is no bundle, and the page that needs none stays the demo.
    has_editor = await asyncio.to_thread(settings.demo_bundle.is_file)
    return _asset(settings, "editor.html" if has_editor else "demo.html", HTML)


@router.get("/demo/classic")
async def classic_page(settings: SettingsDep) -> Response:
    return _asset(settings, "demo.html", HTML)


@router.get("/demo/editor.js")
async def editor_script(settings: SettingsDep) -> Response:
    _page_enabled(settings)
    bundle = await asyncio.to_thread(_bundle, settings)
    if bundle is None:
        raise Refusal(
            "not_found",
            "the editor is not built: `make run` builds it when Node is there",
            status=404,
        )
    return Response(bundle, media_type=JAVASCRIPT, headers=SECURITY_HEADERS)


@router.get("/demo/demo.js")
async def demo_script(settings: SettingsDep) -> Response:
    return _asset(settings, "demo.js", JAVASCRIPT)


@router.get("/demo/demo.css")
async def demo_style(settings: SettingsDep) -> Response:
    return _asset(settings, "demo.css", "text/css; charset=utf-8")


async def _json_body(request: Request) -> object:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Refusal(
                "payload_too_large", f"expected at most {MAX_BODY_BYTES} bytes", status=413
            )
    try:
        return json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        raise Refusal(
            "invalid_json", 'expected a JSON object {"user": ..., "project": ...}'
        ) from None


@router.post("/demo/token")
async def demo_token(request: Request, settings: SettingsDep) -> DemoToken:
    """Mint a short-lived HS256 token for one user in one project (development only)."""
    # Anyone who can reach this endpoint can be anyone, so it never exists in production,
    # whatever DEMO_ENABLED says: there the page asks for a token from the web app instead.
    if settings.is_production:
        raise _not_found()
    if not settings.jwt_secret:
        raise Refusal(
            "not_found",
            "minting demo tokens needs JWT_SECRET (HS256): paste a token into the page instead",
            status=404,
        )
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise Refusal("invalid_json", 'expected a JSON object {"user": ..., "project": ...}')
    user, project = body.get("user"), body.get("project")
    if not isinstance(user, str) or USER_ID.fullmatch(user) is None:
        raise Refusal("invalid_user", "expected user: 1-64 characters from A-Z a-z 0-9 _ . -")
    if not isinstance(project, str) or PROJECT_ID.fullmatch(project) is None:
        raise Refusal(
            "invalid_project_id",
            "expected project: 1-128 characters from A-Z a-z 0-9 _ . -",
        )
    token = issue_token(
        settings.jwt_secret, user_id=user, username=user, projects=[project], ttl=TOKEN_TTL
    )
    return DemoToken(token=token, expires_at=int(jwt.get_unverified_claims(token)["exp"]))
