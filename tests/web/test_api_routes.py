"""The REST API and the pages against a real database: auth, CSRF, roles, audit, every route.

The app is the node's own (``create_app``) over a migrated SQLite file; jobs, studies and
quarantine entries are real rows written through ``segnode.storage``. ``/ready`` with a real
listener runs against a real node (``test_ready_with_a_running_node_and_its_listener``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pydicom
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update
from starlette.routing import BaseRoute
from typer.testing import CliRunner

from segnode.config.settings import load_settings
from segnode.node.admin.accounts import add_user
from segnode.node.admin.actors import command_line_actor
from segnode.node.cli import app as cli_app
from segnode.node.service import Node, open_storage
from segnode.node.web.app import create_app
from segnode.storage.filestore import FileStore
from segnode.storage.job_states import JobState
from segnode.storage.jobs import ensure_deliveries
from segnode.storage.models import (
    AuditEvent,
    Instance,
    JobDelivery,
    NodeEvent,
    QuarantinedInstance,
    Study,
    User,
    UserRole,
)
from segnode.storage.quarantine import record_quarantine
from tests.dcmtk_peers import Storescp
from tests.fixtures.dicom_study import BuiltSeries
from tests.helpers import free_port, require_shared_data
from tests.web.conftest import PASSWORD, Dashboard

OPEN = {"/health", "/ready", "/login", "/api/session", "/logout", "/api/openapi.json", "/api/docs",
        "/api/docs/oauth2-redirect", "/auth/oidc/login", "/auth/oidc/callback"}


def api_routes(routes: Sequence[BaseRoute]) -> list[APIRoute]:
    """Every route of the app, included routers' too (FastAPI keeps those in a wrapper)."""
    found: list[APIRoute] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            found += api_routes(included.routes)
        elif isinstance(route, APIRoute):
            found.append(route)
    return found


def _audit(dashboard: Dashboard) -> list[AuditEvent]:
    with dashboard.sessions() as session:
        return list(session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())


def test_nothing_but_health_and_ready_answers_without_a_session_or_token(dashboard: Dashboard) -> None:
    anonymous = dashboard.client(follow_redirects=False)
    routes = [r for r in api_routes(anonymous.app.routes) if r.path not in OPEN]
    assert len(routes) > 30
    for route in routes:
        path = route.path.replace("{job_id}", "1").replace("{study_id}", "1").replace(
            "{entry_id}", "1").replace("{name}", "x").replace("{model_id}", "x").replace("{username}", "x")
        for method in route.methods:
            answer = anonymous.request(method, path)
            if path.startswith(("/api/", "/metrics")):
                assert answer.status_code == 401, (method, path, answer.status_code)
            else:
                assert answer.status_code == 303 and answer.headers["location"].startswith("/login"), (method, path)
    assert anonymous.get("/health").json() == {"status": "alive"}
    ready = anonymous.get("/ready")
    assert ready.status_code == 503  # no node in this process: no listener
    checks = ready.json()["checks"]
    assert checks["listener"]["ok"] is False and checks["database"]["ok"] is True
    assert checks["model"]["ok"] is True and "segnode-brats22-v1" in checks["model"]["detail"]


def test_ready_with_a_running_node_and_its_listener(start: Callable[..., Node]) -> None:
    port = free_port()
    node = start(web={"enabled": True, "port": port})
    answer = httpx.get(f"http://127.0.0.1:{port}/ready")
    assert answer.status_code == 200, answer.text
    assert {name: check["ok"] for name, check in answer.json()["checks"].items()} == {
        "database": True, "listener": True, "disk": True, "model": True,
    }
    assert f":{node.scp.port}" in answer.json()["checks"]["listener"]["detail"]


def test_a_wrong_password_is_refused_and_audited_and_repeated_failures_are_rate_limited(
    dashboard: Dashboard,
) -> None:
    client = dashboard.client()
    wrong = client.post("/api/session", json={"username": "otto", "password": "not it"})
    assert wrong.status_code == 401 and "wrong user name or password" in wrong.json()["detail"]
    unknown = client.post("/api/session", json={"username": "nobody", "password": "x"})
    assert unknown.json()["detail"] == wrong.json()["detail"]  # which names exist is not told
    client.post("/api/session", json={"username": "otto", "password": "still not"})
    client.post("/api/session", json={"username": "otto", "password": "nor this"})
    limited = dashboard.client().post("/api/session", json={"username": "otto", "password": PASSWORD})
    assert limited.status_code == 429 and "too many failed sign-ins" in limited.json()["detail"]
    logins = [(r.target, r.ok) for r in _audit(dashboard) if r.action == "login"]
    assert logins[:2] == [("otto", False), ("nobody", False)] and logins[-1] == ("otto", False)
    # The same client address is limited too, whichever name it tries next.
    other = dashboard.client().post("/api/session", json={"username": "ada", "password": PASSWORD})
    assert other.status_code == 429


def test_a_disabled_users_session_stops_at_once(dashboard: Dashboard) -> None:
    client, _ = dashboard.signed_in("vera")
    assert client.get("/api/me").status_code == 200
    with dashboard.sessions.begin() as session:
        session.execute(update(User).where(User.username == "vera").values(disabled=True))
    assert client.get("/api/me").status_code == 401


def test_changes_need_the_csrf_token_with_a_session_and_none_with_a_token(dashboard: Dashboard) -> None:
    job_id = dashboard.job(JobState.FAILED)
    client, csrf = dashboard.signed_in("otto")
    refused = client.post(f"/api/jobs/{job_id}/retry")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert client.post(f"/api/jobs/{job_id}/retry", headers={"X-CSRF-Token": "forged"}).status_code == 403
    retried = client.post(f"/api/jobs/{job_id}/retry", headers={"X-CSRF-Token": csrf})
    assert retried.status_code == 200 and retried.json() == {"id": job_id, "state": "selecting", "attempt": 2}

    made = client.post("/api/tokens", json={"name": "script"}, headers={"X-CSRF-Token": csrf})
    assert made.status_code == 201
    token = made.json()["token"]
    robot = dashboard.client()
    bearer = {"Authorization": f"Bearer {token}"}
    cancelled = robot.post(f"/api/jobs/{job_id}/cancel", json={"reason": "by script"}, headers=bearer)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert robot.get("/api/me", headers={"Authorization": "Bearer sgn_unknown"}).status_code == 401
    actions = [(r.actor, r.action, r.target) for r in _audit(dashboard) if r.action.startswith(("job.", "token."))]
    assert actions == [
        ("otto", "job.retry", f"job {job_id}"),
        ("otto", "token.create", "otto"),
        ("otto", "job.cancel", f"job {job_id}"),
    ]
    assert all(r.client == "testclient" for r in _audit(dashboard) if r.action.startswith("job."))


def test_a_viewer_reads_but_cannot_act_and_only_an_admin_sees_users_and_the_audit(dashboard: Dashboard) -> None:
    job_id = dashboard.job(JobState.FAILED)
    viewer, csrf = dashboard.signed_in("vera")
    assert viewer.get(f"/api/jobs/{job_id}").json()["state"] == "failed"
    denied = viewer.post(f"/api/jobs/{job_id}/retry", headers={"X-CSRF-Token": csrf})
    assert denied.status_code == 403 and "operator role" in denied.json()["detail"]
    assert viewer.get(f"/api/jobs/{job_id}").json()["state"] == "failed"  # unchanged
    assert viewer.get("/api/audit").status_code == 403 and viewer.get("/api/users").status_code == 403
    operator, csrf_o = dashboard.signed_in("otto")
    assert operator.get("/api/users").status_code == 403
    new = {"username": "nina", "role": "viewer", "password": "a very long password"}
    assert operator.post("/api/users", json=new, headers={"X-CSRF-Token": csrf_o}).status_code == 403
    admin, csrf_a = dashboard.signed_in("ada")
    assert admin.post("/api/users", json=new, headers={"X-CSRF-Token": csrf_a}).status_code == 201
    weak = {**new, "username": "neil", "password": "short"}
    assert admin.post("/api/users", json=weak, headers={"X-CSRF-Token": csrf_a}).status_code == 422
    assert {u["username"] for u in admin.get("/api/users").json()} == {"vera", "otto", "ada", "nina"}
    assert any(row["action"] == "user.add" and row["target"] == "nina" for row in admin.get("/api/audit").json())


def test_jobs_filter_show_retry_and_refuse_what_the_machine_does_not_allow(dashboard: Dashboard) -> None:
    failed = dashboard.job(JobState.FAILED)
    not_applicable = dashboard.job(JobState.NOT_APPLICABLE)
    done = dashboard.job(JobState.DONE)
    client, csrf = dashboard.signed_in("otto")
    headers = {"X-CSRF-Token": csrf}
    assert [j["id"] for j in client.get("/api/jobs").json()] == [done, not_applicable, failed]
    assert [j["id"] for j in client.get("/api/jobs?state=not_applicable").json()] == [not_applicable]
    both = client.get("/api/jobs", params=[("state", "failed"), ("state", "done")]).json()
    assert sorted(j["id"] for j in both) == [failed, done]
    study_id = client.get(f"/api/jobs/{failed}").json()["study_id"]
    assert [j["id"] for j in client.get(f"/api/jobs?study_id={study_id}").json()] == [failed]
    assert client.get("/api/jobs?state=broken").status_code == 422
    detail = client.get(f"/api/jobs/{failed}").json()
    assert detail["failed_step"] == "selecting" and [e["kind"] for e in detail["events"]][-1] == "failed"
    assert client.get("/api/jobs/999").status_code == 404
    assert client.post(f"/api/jobs/{done}/retry", headers=headers).status_code == 409
    assert client.post(f"/api/jobs/{failed}/retry", json={"from_step": "done"}, headers=headers).status_code == 422
    assert client.post("/api/jobs/999/retry", headers=headers).status_code == 404
    again = client.post(f"/api/jobs/{not_applicable}/retry", json={"from_step": "selecting"}, headers=headers)
    assert again.json() == {"id": not_applicable, "state": "selecting", "attempt": 2}


def test_a_waiting_study_is_completed_by_hand_and_a_complete_one_is_not(dashboard: Dashboard) -> None:
    dashboard.job(JobState.FAILED)  # its study is "receiving" (the rows were written directly)
    client, csrf = dashboard.signed_in("otto")
    [study] = client.get("/api/studies").json()
    asked = client.post(f"/api/studies/{study['id']}/complete", headers={"X-CSRF-Token": csrf})
    assert asked.status_code == 202
    with dashboard.sessions.begin() as session:
        row = session.get(Study, study["id"])
        assert row is not None and row.force_complete_by == "otto"
        assert session.execute(select(NodeEvent.kind)).scalars().all() == ["force_complete_requested"]
        row.state = "complete"
    assert client.post(f"/api/studies/{study['id']}/complete", headers={"X-CSRF-Token": csrf}).status_code == 409


def test_the_quarantine_is_listed_downloaded_by_operators_and_deleted_by_admins(dashboard: Dashboard) -> None:
    store = FileStore(dashboard.settings.storage.data_dir, fsync=False)
    data = b"\x00" * 128 + b"DICM" + b"not really an instance"
    kept = store.quarantine(data, "malformed dataset: truncated element (0010,0010)", {})
    with dashboard.sessions.begin() as session:
        entry = record_quarantine(
            session, reason="malformed dataset: truncated element (0010,0010)", status_code=0xC000,
            file_path=str(kept.path), sop_instance_uid="1.2.3.4", sop_class_uid=None,
            calling_ae="SCANNER", association_id=None,
        )
        session.flush()
        entry_id = entry.id
    viewer, _ = dashboard.signed_in("vera")
    [listed] = viewer.get("/api/quarantine").json()
    assert (listed["id"], listed["status_code"], listed["has_file"]) == (entry_id, 0xC000, True)
    assert viewer.get(f"/api/quarantine/{entry_id}/file").status_code == 403
    operator, csrf_o = dashboard.signed_in("otto")
    download = operator.get(f"/api/quarantine/{entry_id}/file")
    assert download.status_code == 200 and download.content == data
    assert operator.delete(f"/api/quarantine/{entry_id}", headers={"X-CSRF-Token": csrf_o}).status_code == 403
    admin, csrf_a = dashboard.signed_in("ada")
    assert admin.delete(f"/api/quarantine/{entry_id}", headers={"X-CSRF-Token": csrf_a}).status_code == 204
    assert not (store.quarantine_root / kept.path).exists()
    with dashboard.sessions() as session:
        assert session.execute(select(QuarantinedInstance)).first() is None
    deleted = [r for r in _audit(dashboard) if r.action == "quarantine.delete"]
    assert deleted[0].actor == "ada" and deleted[0].detail["sop_instance_uid"] == "1.2.3.4"


def test_the_rule_tester_gives_the_decision_the_cli_gives_for_a_real_file(dashboard: Dashboard) -> None:
    path = sorted((require_shared_data() / "ge_mr750_3T_axial_EPI_human").glob("*.dcm"))[0]
    client, csrf = dashboard.signed_in("vera")
    answer = client.post(
        "/api/rules/test", files={"files": (path.name, path.read_bytes(), "application/dicom")},
        headers={"X-CSRF-Token": csrf},
    )
    assert answer.status_code == 200, answer.text
    [study] = answer.json()["studies"]
    assert (study["action"], study["rule"]) == ("process", "brain-mr")
    cli = CliRunner().invoke(cli_app, ["rules", "test", str(path), "--json"])
    assert cli.exit_code == 0 and json.loads(cli.output)["studies"] == [study]
    junk = client.post("/api/rules/test", files={"files": ("x.txt", b"hello", "text/plain")},
                       headers={"X-CSRF-Token": csrf})
    assert junk.status_code == 422 and "is a DICOM instance" in junk.json()["detail"]


def test_models_are_listed_with_their_card_and_verified(dashboard: Dashboard) -> None:
    client, csrf = dashboard.signed_in("vera")
    models = {m["id"]: m for m in client.get("/api/models").json()}
    default = models["segnode-brats22-v1"]
    assert default["in_use"] is True and default["card"] and "Not for clinical use" in default["manifest"]["intended_use"]
    verified = client.post("/api/models/segnode-brats22-v1/verify", headers={"X-CSRF-Token": csrf}).json()
    assert verified["ok"] is True and default["manifest"]["weights_sha256"] in verified["detail"]
    assert client.post("/api/models/nope/verify", headers={"X-CSRF-Token": csrf}).status_code == 404


def test_the_openapi_schema_lists_every_api_route(dashboard: Dashboard) -> None:
    client = dashboard.client()
    schema = client.get("/api/openapi.json").json()
    routes = {r.path for r in api_routes(client.app.routes) if r.path.startswith("/api/")}
    assert routes <= set(schema["paths"])


def test_metrics_are_the_databases_counts_in_prometheus_format(dashboard: Dashboard) -> None:
    failed, done = dashboard.job(JobState.FAILED), dashboard.job(JobState.DONE, trigger=(
        "complete: every association that delivered to the study was released with T1, T1c, T2 and FLAIR present"))
    with dashboard.sessions.begin() as session:
        pacs, = ensure_deliveries(session, done, ["pacs"])
        pacs.state, pacs.attempts = "delivered", 2
        archive, = ensure_deliveries(session, failed, ["archive"])
        archive.state, archive.attempts = "failed", 5
    client, csrf = dashboard.signed_in("otto")
    token = client.post("/api/tokens", json={"name": "prometheus"}, headers={"X-CSRF-Token": csrf}).json()["token"]
    assert dashboard.client().get("/metrics").status_code == 401
    text = dashboard.client().get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    assert samples[("segnode_jobs", (("state", "failed"),))] == 1
    assert samples[("segnode_jobs", (("state", "done"),))] == 1
    assert samples[("segnode_jobs", (("state", "not_applicable"),))] == 0
    assert samples[("segnode_instances_received_total", ())] == 2
    assert samples[("segnode_studies_fired_total", (("reason", "release_complete"),))] == 1
    assert samples[("segnode_studies_fired_total", (("reason", "other"),))] == 1
    assert samples[("segnode_delivery_attempts_total", (("destination", "pacs"),))] == 2
    assert samples[("segnode_deliveries_failed", (("destination", "archive"),))] == 1
    assert samples[("segnode_deliveries_delivered_total", (("destination", "pacs"),))] == 1
    # put_job_in moves with duration None: no step has a duration yet; a done job's would.
    assert not any(name == "segnode_step_duration_seconds_count" for name, _ in samples)
    assert samples[("segnode_disk_free_bytes", ())] > 0
    with dashboard.sessions() as session:
        assert session.execute(select(JobDelivery)).scalars().all()


def test_the_pages_render_for_each_role_and_a_form_without_its_token_is_refused(dashboard: Dashboard) -> None:
    job_id = dashboard.job(JobState.FAILED)
    for name in ("vera", "otto", "ada"):
        client = dashboard.client()
        signed = client.post("/login", data={"username": name, "password": PASSWORD, "next": f"/jobs/{job_id}"},
                             follow_redirects=False)
        assert signed.status_code == 303 and signed.headers["location"] == f"/jobs/{job_id}"
        for path in ("/", "/studies", "/jobs", f"/jobs/{job_id}", "/destinations", "/quarantine", "/rules", "/models"):
            page = client.get(path)
            assert page.status_code == 200 and "not for clinical use" in page.text, (name, path)
        page = client.get(f"/jobs/{job_id}").text
        assert ('id="retry"' in page) is (name != "vera")
        assert (client.get("/audit").status_code == 200) is (name == "ada")
        assert client.post(f"/jobs/{job_id}/cancel", data={}, follow_redirects=False).status_code == 403
    assert dashboard.client().post("/login", data={"username": "ada", "password": PASSWORD, "next": "//evil.example"},
                                   follow_redirects=False).headers["location"] == "/"



def test_release_sends_a_kept_instance_through_the_listener_and_echo_reaches_a_real_peer(
    start: Callable[..., Node], tcga_study: dict[str, BuiltSeries], tmp_path: Path
) -> None:
    """Real node, real listener, real DCMTK peer: a valid instance kept in quarantine (as the
    start-up reconciliation keeps an orphan) is released and stored; a malformed one is
    refused again and stays; C-ECHO answers for a live peer and explains a dead one."""
    pacs = Storescp(tmp_path / "pacs")
    dead_port = free_port()
    try:
        web_port = free_port()
        node = start(web={"enabled": True, "port": web_port}, delivery={"destinations": [
            pacs.destination(name="pacs").model_dump(mode="json"),
            {"name": "gone", "ae_title": "GONE", "host": "127.0.0.1", "port": dead_port, "timeout_s": 2},
        ]})
        good = tcga_study["t1c"].files[0]
        bad = pydicom.dcmread(good)
        del bad.StudyInstanceUID
        bad_path = tmp_path / "bad.dcm"
        bad.save_as(bad_path)
        ids = {}
        for name, path in (("good", good), ("bad", bad_path)):
            kept = node.store.quarantine(path.read_bytes(), "orphan file (test)", {})
            with node.sessions.begin() as session:
                row = record_quarantine(session, reason="orphan file (test)", status_code=0, file_path=str(kept.path),
                                        sop_instance_uid=None, sop_class_uid=None, calling_ae=None,
                                        association_id=None)
                session.flush()
                ids[name] = row.id
        password = (node.settings.storage.data_dir / "initial-admin-password").read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}") as client:
            csrf = client.post("/api/session", json={"username": "admin", "password": password}).json()["csrf_token"]
            headers = {"X-CSRF-Token": csrf}
            released = client.post(f"/api/quarantine/{ids['good']}/release", headers=headers).json()
            assert released == {"id": ids["good"], "released": True, "detail": "accepted by the listener"}
            again = client.post(f"/api/quarantine/{ids['bad']}/release", headers=headers).json()
            assert again["released"] is False and "refused again" in again["detail"]
            entries = {e["id"]: e for e in client.get("/api/quarantine").json()}
            assert ids["good"] not in entries and ids["bad"] in entries
            assert any("Study Instance UID" in e["reason"] or "StudyInstanceUID" in e["reason"]
                       for e in entries.values() if e["id"] != ids["bad"])  # the new refusal, with its reason
            echo = client.post("/api/destinations/pacs/echo", headers=headers).json()
            assert echo["ok"] is True and echo["round_trip_ms"] > 0
            gone = client.post("/api/destinations/gone/echo", headers=headers).json()
            assert gone["ok"] is False and "cannot connect" in gone["detail"]
        with node.sessions() as session:
            stored = session.execute(select(Instance.sop_instance_uid)).scalars().all()
        assert str(pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID) in stored
    finally:
        pacs.stop()


def test_rules_are_disabled_by_admins_only_and_the_tester_follows(dashboard: Dashboard) -> None:
    path = sorted((require_shared_data() / "ge_mr750_3T_axial_EPI_human").glob("*.dcm"))[0]
    operator, csrf_o = dashboard.signed_in("otto")
    assert operator.post("/api/rules/brain-mr/disable", headers={"X-CSRF-Token": csrf_o}).status_code == 403
    admin, csrf = dashboard.signed_in("ada")
    headers = {"X-CSRF-Token": csrf}
    assert admin.post("/api/rules/brain-mr/disable", json={"reason": "fMRI flood"}, headers=headers).status_code == 204
    assert admin.post("/api/rules/brain-mr/disable", headers=headers).status_code == 409
    assert admin.post("/api/rules/nope/disable", headers=headers).status_code == 404
    listed = {rule["name"]: rule["disabled_by"] for rule in admin.get("/api/rules").json()}
    assert listed == {"radiologist-push": None, "brain-mr": "ada"}
    tested = admin.post("/api/rules/test", files={"files": (path.name, path.read_bytes())}, headers=headers).json()
    assert tested["studies"][0]["action"] == "ignore" and tested["studies"][0]["rule"] is None
    assert "brain-mr" in admin.get("/rules").text and "disabled" in admin.get("/rules").text
    assert admin.post("/api/rules/brain-mr/enable", headers=headers).status_code == 204
    audit = [(r.action, r.target, r.detail) for r in _audit(dashboard) if r.action.startswith("rule.")]
    assert audit == [("rule.disable", "brain-mr", {"reason": "fMRI flood"}), ("rule.enable", "brain-mr", {})]


def test_an_operator_pauses_and_resumes_a_destination_a_viewer_cannot(tmp_path: Path) -> None:
    settings = load_settings(None, {"storage": {"data_dir": str(tmp_path)}, "delivery": {"destinations": [
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}]}})
    _, sessions, _ = open_storage(settings)
    for name, role in (("vera", UserRole.VIEWER), ("otto", UserRole.OPERATOR)):
        add_user(sessions, command_line_actor(), name, role, PASSWORD)
    with TestClient(create_app(settings, sessions, None)) as client:
        def sign(name: str) -> dict[str, str]:
            csrf = client.post("/api/session", json={"username": name, "password": PASSWORD}).json()["csrf_token"]
            return {"X-CSRF-Token": csrf}
        assert client.post("/api/destinations/pacs/pause", headers=sign("vera")).status_code == 403
        headers = sign("otto")
        assert client.post("/api/destinations/pacs/pause", headers=headers).status_code == 204
        assert client.get("/api/destinations").json()[0]["paused_by"] == "otto"
        assert "paused" in client.get("/destinations").text
        assert client.post("/api/destinations/pacs/resume", headers=headers).status_code == 204
        assert client.post("/api/destinations/pacs/resume", headers=headers).status_code == 409
        assert client.post("/api/destinations/nope/pause", headers=headers).status_code == 404
        assert client.get("/api/destinations").json()[0]["paused_by"] is None
