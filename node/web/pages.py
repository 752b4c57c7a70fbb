"""The dashboard's pages: server-rendered Jinja2 templates over the service layer.

Each page has a *live* part (a partial template) that its script reloads every
``[web] refresh_s`` seconds from the same URL with ``?partial=1``; the rest is static.
Actions are plain HTML forms (with the session's CSRF token) that POST, flash what
happened, and redirect back (post/redirect/get), so a reload never repeats an action.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from segnode.node.admin import accounts, destinations, jobs, models, quarantine, rules, studies
from segnode.node.admin import audit as audit_log
from segnode.node.admin.actors import Actor
from segnode.node.admin.errors import AdminError
from segnode.node.admin.rules import group_headers
from segnode.node.admin.status import node_status
from segnode.node.web.context import WebContext
from segnode.node.web.preview import preview_index
from segnode.node.web.security import authenticate, csrf_token, web_context
from segnode.node.web.uploads import read_uploaded_headers
from segnode.storage.job_states import ACTIVE, RETRYABLE, JobState
from segnode.storage.models import UserRole

TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))
router = APIRouter(include_in_schema=False)
Who = Annotated[Actor, Depends(authenticate)]
Ctx = Annotated[WebContext, Depends(web_context)]

#: How each state reads on a badge: done green, failed red, not applicable grey, running blue.
STATE_TONE = {
    JobState.DONE.value: "ok",
    JobState.FAILED.value: "bad",
    JobState.NOT_APPLICABLE.value: "muted",
    JobState.CANCELLED.value: "muted",
    "complete": "ok",
    "receiving": "run",
    "ignored": "muted",
    "discarded": "muted",
}


def render(
    request: Request,
    template: str,
    values: dict[str, Any],
    *,
    actor: Actor | None,
    status_code: int = 200,
) -> HTMLResponse:
    ctx: WebContext = request.app.state.web
    flash = request.session.pop("flash", None) if actor is not None else None
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {
            **values,
            "actor": actor,
            "csrf": csrf_token(request),
            "flash": flash,
            "refresh_ms": int(ctx.settings.web.refresh_s * 1000),
            "tone": STATE_TONE,
            "operator": actor is not None and actor.allows(UserRole.OPERATOR),
            "admin": actor is not None and actor.allows(UserRole.ADMIN),
            "partial": request.query_params.get("partial") == "1",
        },
        status_code=status_code,
    )


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request,
        "error.html",
        {"status": status, "message": message, "actor": None, "csrf": "", "flash": None,
         "refresh_ms": 0, "tone": STATE_TONE, "operator": False, "admin": False, "partial": False},
        status_code=status,
    )


def _flash(request: Request, ok: bool, text: str) -> None:
    request.session["flash"] = {"ok": ok, "text": text}


def _back(request: Request, fallback: str) -> RedirectResponse:
    referer = request.headers.get("referer", "")
    host = str(request.base_url)
    return RedirectResponse(referer if referer.startswith(host) else fallback, status_code=303)


def _act(request: Request, fallback: str, done: str, action: Any) -> RedirectResponse:
    """Run an action, flash its outcome (or the service layer's refusal), go back."""
    try:
        outcome = action()
        _flash(request, True, done.format(outcome=outcome))
    except AdminError as exc:
        _flash(request, False, str(exc))
    return _back(request, fallback)


# -- pages -------------------------------------------------------------------------------------


@router.get("/")
def overview(request: Request, actor: Who, ctx: Ctx) -> Response:
    status = node_status(ctx.settings, ctx.sessions, ctx.probe)
    recent = jobs.jobs(ctx.sessions, newest_first=True, limit=10)
    waiting = [row for row in studies.studies(ctx.sessions, newest_first=True) if row.state == "receiving"]
    template = "_overview.html" if request.query_params.get("partial") == "1" else "overview.html"
    return render(request, template, {"status": status, "jobs": recent, "waiting": waiting}, actor=actor)


@router.get("/studies")
def studies_page(request: Request, actor: Who, ctx: Ctx) -> Response:
    rows = studies.studies(ctx.sessions, newest_first=True)
    template = "_studies.html" if request.query_params.get("partial") == "1" else "studies.html"
    return render(request, template, {"studies": rows}, actor=actor)


@router.post("/studies/{study_id}/complete")
def complete_study(study_id: int, request: Request, actor: Who, ctx: Ctx) -> Response:
    return _act(request, "/studies", f"study {study_id}: completion requested; it fires within a second",
                lambda: studies.force_complete(ctx.sessions, actor, study_id))


@router.get("/jobs")
def jobs_page(request: Request, actor: Who, ctx: Ctx, state: str = "", study_id: int | None = None) -> Response:
    states = jobs.parse_states([state]) if state else []
    rows = jobs.jobs(ctx.sessions, states=states, study_id=study_id, newest_first=True, limit=500)
    template = "_jobs.html" if request.query_params.get("partial") == "1" else "jobs.html"
    return render(
        request, template,
        {"jobs": rows, "state": state, "study_id": study_id, "states": [s.value for s in JobState]},
        actor=actor,
    )


@router.get("/jobs/{job_id}")
def job_page(job_id: int, request: Request, actor: Who, ctx: Ctx) -> Response:
    detail = jobs.job(ctx.sessions, job_id)
    template = "_job.html" if request.query_params.get("partial") == "1" else "job.html"
    steps = [e for e in detail.events if e.duration_s is not None]
    return render(
        request, template,
        {
            "job": detail,
            "steps": steps,
            "preview": preview_index(ctx, job_id),
            "retryable": detail.state in RETRYABLE,
            "cancellable": detail.state in ACTIVE,
            "resumable": [s.value for s in ACTIVE],
            "pretty": lambda value: json.dumps(value, indent=1, sort_keys=True),
        },
        actor=actor,
    )


@router.post("/jobs/{job_id}/retry")
def retry_job(
    job_id: int, request: Request, actor: Who, ctx: Ctx, from_step: Annotated[str, Form()] = ""
) -> Response:
    return _act(request, f"/jobs/{job_id}", "job {outcome.id}: attempt {outcome.attempt}, resumes at {outcome.state}",
                lambda: jobs.retry(ctx.sessions, actor, job_id, from_step or None))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: int, request: Request, actor: Who, ctx: Ctx) -> Response:
    return _act(request, f"/jobs/{job_id}", "job {outcome.id}: cancelled",
                lambda: jobs.cancel(ctx.sessions, actor, job_id))


@router.get("/destinations")
def destinations_page(request: Request, actor: Who, ctx: Ctx) -> Response:
    views = destinations.destinations(ctx.settings, ctx.sessions)
    echo = request.session.pop("echo", None)
    return render(request, "destinations.html", {"destinations": views, "echo": echo}, actor=actor)


@router.post("/destinations/{name}/echo")
def echo_destination(name: str, request: Request, actor: Who, ctx: Ctx) -> Response:
    def run() -> str:
        result = destinations.echo(ctx.settings, ctx.sessions, actor, name)
        if not result.ok:
            raise AdminError(f"{name}: C-ECHO failed: {result.detail}")
        return f"{result.round_trip_ms:.0f} ms"
    return _act(request, "/destinations", f"{name}: C-ECHO success ({{outcome}})", run)


@router.post("/destinations/{name}/pause")
def pause_destination(name: str, request: Request, actor: Who, ctx: Ctx) -> Response:
    return _act(request, "/destinations", f"{name}: paused; its deliveries wait until it is resumed",
                lambda: destinations.pause(ctx.settings, ctx.sessions, actor, name))


@router.post("/destinations/{name}/resume")
def resume_destination(name: str, request: Request, actor: Who, ctx: Ctx) -> Response:
    return _act(request, "/destinations", f"{name}: resumed; waiting deliveries go out within seconds",
                lambda: destinations.resume_destination(ctx.settings, ctx.sessions, actor, name))


@router.get("/quarantine")
def quarantine_page(request: Request, actor: Who, ctx: Ctx) -> Response:
    template = "_quarantine.html" if request.query_params.get("partial") == "1" else "quarantine.html"
    return render(request, template, {"entries": quarantine.entries(ctx.sessions)}, actor=actor)


@router.post("/quarantine/{entry_id}/release")
def release_quarantined(entry_id: int, request: Request, actor: Who, ctx: Ctx) -> Response:
    def run() -> str:
        result = quarantine.release(ctx.settings, ctx.sessions, actor, entry_id)
        if not result.released:
            raise AdminError(f"quarantine entry {entry_id}: {result.detail}")
        return result.detail
    return _act(request, "/quarantine", f"quarantine entry {entry_id} released: {{outcome}}", run)


@router.post("/quarantine/{entry_id}/delete")
def delete_quarantined(entry_id: int, request: Request, actor: Who, ctx: Ctx) -> Response:
    return _act(request, "/quarantine", f"quarantine entry {entry_id} deleted",
                lambda: quarantine.delete(ctx.settings, ctx.sessions, actor, entry_id))


@router.get("/rules")
def rules_page(request: Request, actor: Who, ctx: Ctx) -> Response:
    return render(
        request, "rules.html",
        {"rules": ctx.settings.routing.rules, "report": None, "disabled": rules.suspended_rules(ctx.sessions)},
        actor=actor,
    )


@router.post("/rules/{name}/disable")
def disable_rule(name: str, request: Request, actor: Who, ctx: Ctx) -> Response:
    return _act(request, "/rules", f"rule {name!r} disabled: studies are routed by the next rules",
                lambda: rules.disable_rule(ctx.settings, ctx.sessions, actor, name))


@router.post("/rules/{name}/enable")
def enable_rule(name: str, request: Request, actor: Who, ctx: Ctx) -> Response:
    return _act(request, "/rules", f"rule {name!r} enabled",
                lambda: rules.enable_rule(ctx.settings, ctx.sessions, actor, name))


@router.post("/rules")
async def rules_tester(
    request: Request,
    actor: Who,
    ctx: Ctx,
    files: Annotated[list[UploadFile], File()],
    called_ae: Annotated[str, Form()] = "",
    calling_ae: Annotated[str, Form()] = "",
) -> Response:
    headers, unreadable = await read_uploaded_headers(files)
    disabled = rules.suspended_rules(ctx.sessions)
    report = rules.route_headers(
        ctx.settings, group_headers(headers), called_ae or None, calling_ae or None, disabled
    )
    error = None if headers else f"none of the {len(files)} file(s) is a DICOM instance"
    return render(
        request, "rules.html",
        {"rules": ctx.settings.routing.rules, "report": report, "unreadable": unreadable, "error": error,
         "disabled": disabled,
         "files": [f.filename for f in files]},
        actor=actor,
        status_code=200 if headers else 422,
    )


@router.get("/models")
def models_page(request: Request, actor: Who, ctx: Ctx) -> Response:
    return render(request, "models.html", {"models": models.models(ctx.settings)}, actor=actor)


@router.post("/models/{model_id}/verify")
def verify_model(model_id: str, request: Request, actor: Who, ctx: Ctx) -> Response:
    def run() -> str:
        result = models.verify(ctx.settings, ctx.sessions, actor, model_id)
        if not result.ok:
            raise AdminError(f"{model_id}: {result.detail}")
        return result.detail
    return _act(request, "/models", f"{model_id}: {{outcome}}", run)


@router.get("/audit")
def audit_page(request: Request, actor: Who, ctx: Ctx, action: str = "") -> Response:
    rows = audit_log.audit_log(ctx.sessions, actor, limit=500, action=action or None)
    return render(request, "audit.html", {"rows": rows, "action": action}, actor=actor)


@router.get("/users")
def users_page(request: Request, actor: Who, ctx: Ctx) -> Response:
    token = request.session.pop("new_token", None)
    return render(
        request, "users.html",
        {"users": accounts.users(ctx.sessions, actor), "roles": [r.value for r in UserRole], "token": token},
        actor=actor,
    )


@router.post("/users")
def add_user(
    request: Request, actor: Who, ctx: Ctx,
    username: Annotated[str, Form()], role: Annotated[str, Form()], password: Annotated[str, Form()] = "",
) -> Response:
    return _act(request, "/users", f"user {username!r} added",
                lambda: accounts.add_user(ctx.sessions, actor, username, UserRole(role), password or None))


@router.post("/users/{username}")
def change_user(
    username: str, request: Request, actor: Who, ctx: Ctx,
    role: Annotated[str, Form()] = "", disabled: Annotated[str, Form()] = "",
) -> Response:
    return _act(request, "/users", f"user {username!r} changed",
                lambda: accounts.change_user(
                    ctx.sessions, actor, username,
                    role=UserRole(role) if role else None,
                    disabled={"yes": True, "no": False}.get(disabled),
                ))


@router.post("/users/{username}/token")
def new_token(username: str, request: Request, actor: Who, ctx: Ctx, name: Annotated[str, Form()]) -> Response:
    def run() -> str:
        token = accounts.create_token(ctx.sessions, actor, username, name)
        request.session["new_token"] = {"username": username, "name": name, "token": token}
        return name
    return _act(request, "/users", f"token {{outcome!r}} created for {username!r}: copy it now", run)
