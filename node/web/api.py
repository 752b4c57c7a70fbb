"""The REST API (``/api``; schema at ``/api/openapi.json``): the dashboard's operations as JSON.

Each route authenticates (session with CSRF, or ``Authorization: Bearer <token>``), calls the
service layer and returns its rows' ``to_json``; the service layer's refusals become
404 / 409 / 403 / 422 (``app.py``). No route has logic of its own.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from segnode.node.admin import accounts, destinations, jobs, models, quarantine, rules, studies
from segnode.node.admin import audit as audit_log
from segnode.node.admin.actors import Actor
from segnode.node.admin.errors import InvalidInputError
from segnode.node.admin.rules import StudyReport, group_headers
from segnode.node.admin.status import node_status, remote_workers
from segnode.node.web.context import WebContext
from segnode.node.web.preview import preview_file, preview_index
from segnode.node.web.security import authenticate, web_context
from segnode.node.web.uploads import read_uploaded_headers
from segnode.storage.models import UserRole

router = APIRouter(prefix="/api", tags=["api"])
Who = Annotated[Actor, Depends(authenticate)]
Ctx = Annotated[WebContext, Depends(web_context)]


class RetryRequest(BaseModel):
    from_step: str | None = Field(None, description="resume at this state (default: where it stopped)")


class CancelRequest(BaseModel):
    reason: str | None = None


class Suspend(BaseModel):
    reason: str | None = Field(None, max_length=500)


class NewUser(BaseModel):
    username: str = Field(min_length=1, max_length=128)
    role: UserRole = UserRole.VIEWER
    password: str | None = Field(None, description="none: the user signs in through OpenID Connect only")


class UserChange(BaseModel):
    role: UserRole | None = None
    password: str | None = None
    disabled: bool | None = None


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    username: str | None = Field(None, description="whose token (admins only); default: yours")


@router.get("/status")
def get_status(actor: Who, ctx: Ctx) -> dict[str, Any]:
    return node_status(ctx.settings, ctx.sessions, ctx.probe).to_json()


@router.get("/workers")
def get_workers(actor: Who, ctx: Ctx) -> list[dict[str, Any]]:
    """``segnode worker`` processes with their heartbeat state (empty with the embedded executor)."""
    return [asdict(worker) for worker in remote_workers(ctx.settings, ctx.sessions)]


@router.get("/studies")
def get_studies(actor: Who, ctx: Ctx) -> list[dict[str, Any]]:
    return [row.to_json() for row in studies.studies(ctx.sessions, newest_first=True)]


@router.post("/studies/{study_id}/complete", status_code=202)
def complete_study(study_id: int, actor: Who, ctx: Ctx) -> dict[str, Any]:
    studies.force_complete(ctx.sessions, actor, study_id)
    return {"study_id": study_id, "requested_by": actor.name}


@router.get("/jobs")
def get_jobs(
    actor: Who,
    ctx: Ctx,
    state: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies defaults
    study_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[dict[str, Any]]:
    rows = jobs.jobs(
        ctx.sessions, states=jobs.parse_states(state), study_id=study_id, newest_first=True, limit=limit
    )
    return [row.to_json() for row in rows]


@router.get("/jobs/{job_id}")
def get_job(job_id: int, actor: Who, ctx: Ctx) -> dict[str, Any]:
    return jobs.job(ctx.sessions, job_id).to_json()


@router.post("/jobs/{job_id}/retry")
def retry_job(job_id: int, actor: Who, ctx: Ctx, body: RetryRequest | None = None) -> dict[str, Any]:
    job = jobs.retry(ctx.sessions, actor, job_id, body.from_step if body else None)
    return {"id": job.id, "state": job.state.value, "attempt": job.attempt}


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: int, actor: Who, ctx: Ctx, body: CancelRequest | None = None) -> dict[str, Any]:
    job = jobs.cancel(ctx.sessions, actor, job_id, body.reason if body else None)
    return {"id": job.id, "state": job.state.value}


@router.get("/jobs/{job_id}/preview")
def get_preview(job_id: int, actor: Who, ctx: Ctx) -> dict[str, Any]:
    jobs.job(ctx.sessions, job_id)  # 404 for no such job
    return preview_index(ctx, job_id)


@router.get("/jobs/{job_id}/preview/{name}")
def get_preview_image(job_id: int, name: str, actor: Who, ctx: Ctx) -> FileResponse:
    return FileResponse(preview_file(ctx, job_id, name), media_type="image/png")


@router.get("/destinations")
def get_destinations(actor: Who, ctx: Ctx) -> list[dict[str, Any]]:
    return [view.to_json() for view in destinations.destinations(ctx.settings, ctx.sessions)]


@router.post("/destinations/{name}/echo")
def echo_destination(name: str, actor: Who, ctx: Ctx) -> dict[str, Any]:
    result = destinations.echo(ctx.settings, ctx.sessions, actor, name)
    return {"destination": result.destination, "ok": result.ok, "detail": result.detail,
            "round_trip_ms": result.round_trip_ms}


@router.post("/destinations/{name}/pause", status_code=204)
def pause_destination(name: str, actor: Who, ctx: Ctx, body: Suspend | None = None) -> None:
    destinations.pause(ctx.settings, ctx.sessions, actor, name, body.reason if body else None)


@router.post("/destinations/{name}/resume", status_code=204)
def resume_destination(name: str, actor: Who, ctx: Ctx) -> None:
    destinations.resume_destination(ctx.settings, ctx.sessions, actor, name)


@router.get("/quarantine")
def get_quarantine(actor: Who, ctx: Ctx) -> list[dict[str, Any]]:
    return [row.to_json() for row in quarantine.entries(ctx.sessions)]


@router.get("/quarantine/{entry_id}/file")
def download_quarantined(entry_id: int, actor: Who, ctx: Ctx) -> FileResponse:
    path = quarantine.file_of(ctx.settings, ctx.sessions, actor, entry_id)
    return FileResponse(path, media_type="application/dicom", filename=f"quarantine-{entry_id}.dcm")


@router.post("/quarantine/{entry_id}/release")
def release_quarantined(entry_id: int, actor: Who, ctx: Ctx) -> dict[str, Any]:
    result = quarantine.release(ctx.settings, ctx.sessions, actor, entry_id)
    return {"id": result.id, "released": result.released, "detail": result.detail}


@router.delete("/quarantine/{entry_id}", status_code=204)
def delete_quarantined(entry_id: int, actor: Who, ctx: Ctx) -> None:
    quarantine.delete(ctx.settings, ctx.sessions, actor, entry_id)


@router.get("/rules")
def get_rules(actor: Who, ctx: Ctx) -> list[dict[str, Any]]:
    off = rules.suspended_rules(ctx.sessions)
    return [
        {**rule.model_dump(mode="json"), "disabled_by": off[rule.name].by if rule.name in off else None}
        for rule in ctx.settings.routing.rules
    ]


@router.post("/rules/{name}/disable", status_code=204)
def disable_rule(name: str, actor: Who, ctx: Ctx, body: Suspend | None = None) -> None:
    rules.disable_rule(ctx.settings, ctx.sessions, actor, name, body.reason if body else None)


@router.post("/rules/{name}/enable", status_code=204)
def enable_rule(name: str, actor: Who, ctx: Ctx) -> None:
    rules.enable_rule(ctx.settings, ctx.sessions, actor, name)


@router.post("/rules/test")
async def test_rules(
    actor: Who,
    ctx: Ctx,
    files: Annotated[list[UploadFile], File(description="DICOM files (headers are read, nothing is kept)")],
    called_ae: str | None = None,
    calling_ae: str | None = None,
) -> dict[str, Any]:
    headers, unreadable = await read_uploaded_headers(files)
    if not headers:
        raise InvalidInputError(f"none of the {len(files)} uploaded file(s) is a DICOM instance")
    report: list[StudyReport] = rules.route_headers(
        ctx.settings, group_headers(headers), called_ae, calling_ae, rules.suspended_rules(ctx.sessions)
    )
    return {"studies": report, "unreadable_files": unreadable}


@router.get("/models")
def get_models(actor: Who, ctx: Ctx) -> list[dict[str, Any]]:
    return [
        {"id": m.id, "name": m.name, "version": m.version, "in_use": m.in_use,
         "manifest": m.manifest, "card": m.card, "problem": m.problem}
        for m in models.models(ctx.settings)
    ]


@router.post("/models/{model_id}/verify")
def verify_model(model_id: str, actor: Who, ctx: Ctx) -> dict[str, Any]:
    result = models.verify(ctx.settings, ctx.sessions, actor, model_id)
    return {"id": result.id, "ok": result.ok, "detail": result.detail}


@router.get("/audit")
def get_audit(
    actor: Who, ctx: Ctx, action: str | None = None, limit: Annotated[int, Query(ge=1, le=5000)] = 200
) -> list[dict[str, Any]]:
    return [row.to_json() for row in audit_log.audit_log(ctx.sessions, actor, limit=limit, action=action)]


@router.get("/users")
def get_users(actor: Who, ctx: Ctx) -> list[dict[str, Any]]:
    return [vars_of(user) for user in accounts.users(ctx.sessions, actor)]


@router.post("/users", status_code=201)
def add_user(body: NewUser, actor: Who, ctx: Ctx) -> dict[str, Any]:
    return vars_of(accounts.add_user(ctx.sessions, actor, body.username, body.role, body.password))


@router.patch("/users/{username}")
def change_user(username: str, body: UserChange, actor: Who, ctx: Ctx) -> dict[str, Any]:
    return vars_of(
        accounts.change_user(
            ctx.sessions, actor, username, role=body.role, password=body.password, disabled=body.disabled
        )
    )


@router.post("/tokens", status_code=201)
def new_token(body: NewToken, actor: Who, ctx: Ctx) -> dict[str, Any]:
    username = body.username or actor.name
    token = accounts.create_token(ctx.sessions, actor, username, body.name)
    return {"username": username, "name": body.name, "token": token,
            "note": "shown once; only its SHA-256 is stored"}


@router.get("/me")
def me(actor: Who, request: Request) -> dict[str, Any]:
    return {"username": actor.name, "role": actor.role.value}


def vars_of(user: accounts.UserView) -> dict[str, Any]:
    return {
        "id": user.id, "username": user.username, "role": user.role.value,
        "local_password": user.local_password, "oidc": user.oidc, "disabled": user.disabled,
        "last_login_at": user.last_login_at,
    }

