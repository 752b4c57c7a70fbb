"""The web application: routers, sessions, error mapping, static files.

``create_app`` is the one place that wires it; the node starts it in ``server.WebServer``
and the tests call it directly (``fastapi.testclient``) against a real database.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.sessions import SessionMiddleware

from segnode.config.settings import Settings
from segnode.node.admin.errors import (
    AdminError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    SignInRefusedError,
)
from segnode.node.admin.status import NodeProbe, readiness
from segnode.node.web import api, auth, pages
from segnode.node.web.context import WebContext
from segnode.node.web.metrics import metrics_registry
from segnode.node.web.security import SESSION_COOKIE, NotSignedInError, authenticate, session_secret

STATIC = Path(__file__).with_name("static")
_STATUS: dict[type[AdminError], int] = {
    NotFoundError: 404,
    ConflictError: 409,
    PermissionDeniedError: 403,
    InvalidInputError: 422,
}


def create_app(settings: Settings, sessions: sessionmaker[Session], probe: NodeProbe | None) -> FastAPI:
    ctx = WebContext(settings, sessions, probe)
    app = FastAPI(
        title="segnode",
        summary="DICOM brain-tumour segmentation node: jobs, studies, quarantine, destinations, models",
        description="Research use only. Not for clinical use. Every route except /health and "
        "/ready needs a signed-in session (with its CSRF token for changes) or "
        "`Authorization: Bearer <token>` (`segnode users token NAME`).",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.web = ctx
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(ctx.data_dir),
        session_cookie=SESSION_COOKIE,
        max_age=int(settings.web.session_max_age_s),
        same_site="lax",
        https_only=settings.web.tls.enabled,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(api.router)
    app.include_router(auth.router)
    app.include_router(pages.router)
    registry = metrics_registry(ctx)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Alive: the web thread answers (no database call)."""
        return {"status": "alive"}

    @app.get("/ready", tags=["health"])
    def ready() -> JSONResponse:
        """Ready to take studies: database reachable, listener bound, disk above the floor,
        model verified; 503 naming what is not."""
        checks = readiness(settings, sessions, probe)
        ok = all(check.ok for check in checks)
        body = {
            "ready": ok,
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"])
    async def metrics(request: Request) -> Response:
        """Prometheus text format; needs a token (``bearer_token`` in the scrape config)."""
        await authenticate(request)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(NotSignedInError)
    def not_signed_in(request: Request, exc: NotSignedInError) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": "sign in first (session or bearer token)"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(SignInRefusedError)
    def refused(request: Request, exc: SignInRefusedError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=429 if exc.rate_limited else 401)

    @app.exception_handler(AdminError)
    def admin_error(request: Request, exc: AdminError) -> Response:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
        if _wants_json(request):
            return JSONResponse({"detail": str(exc)}, status_code=status)
        return pages.error_page(request, status, str(exc))

    return app


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/metrics")) or "application/json" in request.headers.get(
        "accept", ""
    )


