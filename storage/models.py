"""SQLAlchemy 2 models: what the node received, and what it decided.

Why this shape: a study's completion state lives here, not in memory, so a
restart in the middle of a transfer resumes where it was; jobs carry an
append-only event log so every decision can be audited afterwards. Times are
stored as naive UTC (SQLite has no time zones) and read back as aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from segnode.storage.job_states import JobState

UID_LENGTH = 64
AE_LENGTH = 16


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class JobStateType(TypeDecorator[JobState]):
    """A :class:`JobState` stored as its value in a plain ``VARCHAR(16)``, read back as a JobState.

    Why not a database enum: the column stays what migration 0001 created (no schema change),
    and a new state is a code change, not a migration. A value that is not a state fails at
    once, in either direction, instead of becoming a job nothing can drive.
    """

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: JobState | str | None, dialect: Dialect) -> str | None:
        return None if value is None else JobState(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> JobState | None:
        return None if value is None else JobState(value)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON}


class StudyState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    IGNORED = "ignored"
    DISCARDED = "discarded"


class AssociationOutcome(StrEnum):
    OPEN = "open"
    RELEASED = "released"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"
    """The node stopped while the association was open."""




class Association(Base):
    __tablename__ = "associations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(AE_LENGTH))
    called_ae: Mapped[str] = mapped_column(String(AE_LENGTH))
    peer_address: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(16), default=AssociationOutcome.OPEN)
    instances_stored: Mapped[int] = mapped_column(Integer, default=0)
    instances_failed: Mapped[int] = mapped_column(Integer, default=0)
    listener: Mapped[str | None] = mapped_column(String(200))
    """The listener process that took the association, ``host:pid`` (NULL before 0007)."""


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=StudyState.RECEIVING, index=True)
    state_reason: Mapped[str | None] = mapped_column(Text)
    state_changed_at: Mapped[datetime]
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]
    received_instances: Mapped[int] = mapped_column(Integer, default=0)
    times_fired: Mapped[int] = mapped_column(Integer, default=0)
    routing_rule: Mapped[str | None] = mapped_column(String(128))
    deadline_passed_at: Mapped[datetime | None]
    force_complete_by: Mapped[str | None] = mapped_column(String(160))
    """Who asked (dashboard, API, CLI) for this receiving study to be treated as complete now."""
    patient_key: Mapped[str | None] = mapped_column(String(64))
    """Hash of the patient's identity (PatientID, issuer, name); compared, never shown."""

    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(128))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Header attributes captured from the first instance (routing, selection)."""
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)

    study: Mapped[Study] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    file_path: Mapped[str] = mapped_column(String(512))
    """Relative to the store root."""
    calling_ae: Mapped[str] = mapped_column(String(AE_LENGTH))
    called_ae: Mapped[str] = mapped_column(String(AE_LENGTH))
    association_id: Mapped[str | None] = mapped_column(ForeignKey("associations.id"), index=True)
    received_at: Mapped[datetime]


class StudyAssociation(Base):
    """Which associations delivered to which study: the release hint needs it."""

    __tablename__ = "study_associations"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    association_id: Mapped[str] = mapped_column(
        ForeignKey("associations.id"), primary_key=True, index=True
    )


class QuarantinedInstance(Base):
    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    quarantined_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(Integer)
    """The DIMSE status the sender got (0 when the instance was acknowledged)."""
    file_path: Mapped[str | None] = mapped_column(String(512))
    """Relative to the quarantine root; None when the copy could not be written (disk full)."""
    sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), index=True)
    sop_class_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    calling_ae: Mapped[str | None] = mapped_column(String(AE_LENGTH))
    association_id: Mapped[str | None] = mapped_column(String(36))


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    state: Mapped[JobState] = mapped_column(JobStateType(), default=JobState.RECEIVED, index=True)
    trigger: Mapped[str] = mapped_column(Text)
    """Why the study fired, in words (the completion decision)."""
    routing_rule: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    failed_step: Mapped[str | None] = mapped_column(String(32))
    """The state a failed or cancelled job stopped in (a :class:`JobState` value): where a retry resumes."""
    error: Mapped[str | None] = mapped_column(Text)
    step_attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Failed tries of the current step (transient failures); reset when the step finishes."""
    next_attempt_at: Mapped[datetime | None]
    """Not before this time (backoff after a transient failure, or a pending delivery)."""
    model_id: Mapped[str | None] = mapped_column(String(128))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    review_recommended: Mapped[bool | None]
    """Set by the write step's quality checks: true when any flag was raised (NULL before)."""
    quality_flags: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    """The raised flags: ``{"check", "role", "summary"}`` each (``pipeline/quality/record.py``)."""
    finished_at: Mapped[datetime | None]
    step_owner: Mapped[str | None] = mapped_column(String(200))
    """Who runs the current step now (a worker's name; distributed executor only)."""
    step_lease_until: Mapped[datetime | None]
    """Until when ``step_owner``'s claim holds unless renewed; past it, another may take over."""
    dispatch_due_at: Mapped[datetime | None]
    """When the node publishes the current step's message (again) if nobody claimed it."""

    events: Mapped[list[JobEvent]] = relationship(order_by="JobEvent.id")
    deliveries: Mapped[list[JobDelivery]] = relationship(order_by="JobDelivery.id")


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class JobDelivery(Base):
    """One destination's copy of a job's results; delivered ones are never sent again."""

    __tablename__ = "job_deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", "destination", name="uq_job_deliveries_job_destination"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    sop_instance_uids: Mapped[list[str]] = mapped_column(JSON, default=list)


class JobSeries(Base):
    __tablename__ = "job_series"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), primary_key=True)


class JobEvent(Base):
    """Append-only: a database trigger refuses UPDATE and DELETE."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    duration_s: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class NodeEvent(Base):
    """What the node decided outside a job: rejections, quarantine, completion, disk."""

    __tablename__ = "node_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32), index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    association_id: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class UserRole(StrEnum):
    """What a dashboard or API user may do; each role can do what the ones before it can."""

    VIEWER = "viewer"
    """Read every page and API listing."""
    OPERATOR = "operator"
    """Also act on jobs, studies and the quarantine (retry, cancel, force-complete, release)."""
    ADMIN = "admin"
    """Also change rules, destinations and users."""


class User(Base):
    """A person (or an OpenID Connect identity) who may sign in to the dashboard or the API.

    ``password_hash`` is an argon2id hash (``argon2-cffi``), or NULL for a user who signs in
    only through the site's identity provider (``oidc_subject``).
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16), default=UserRole.VIEWER)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    oidc_subject: Mapped[str | None] = mapped_column(String(255), unique=True)
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]


class ApiToken(Base):
    """A bearer token for automation; only its SHA-256 is stored (shown once, at creation)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuditEvent(Base):
    """Who did what, when: every state-changing action and every sign-in (append-only).

    ``actor`` is a username (``cli:<login>`` for the command line); ``ok`` is false for a
    refused action or a failed sign-in (the login rate limit counts those); ``client`` is
    the peer address of a web request.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(160), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(160))
    ok: Mapped[bool] = mapped_column(default=True)
    client: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Suspension(Base):
    """A routing rule or a destination an operator switched off from the dashboard, API or CLI.

    Why in the database and not the TOML: a PACS in maintenance or a rule misfiring must be
    stopped now, without a restart, and the switch must hold across restarts and be shared
    by every process of the node. A row present means suspended; resuming deletes it (the
    audit log keeps both moves).
    """

    __tablename__ = "suspensions"
    __table_args__ = (UniqueConstraint("kind", "name", name="uq_suspensions_kind_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    """``rule`` or ``destination``."""
    name: Mapped[str] = mapped_column(String(128))
    by: Mapped[str] = mapped_column(String(160))
    at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(Text)


Index("ix_studies_state_last", Study.state, Study.last_received_at)


class Worker(Base):
    """One ``segnode worker`` process group (Celery worker) and its heartbeat."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    queues: Mapped[str] = mapped_column(String(200))
    """The resource queues it consumes, comma-separated (``cpu``, ``gpu``)."""
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    stopped_at: Mapped[datetime | None]
    """Set by a clean stop; a worker that died keeps its last heartbeat and shows as lost."""
    steps_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    steps_failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
