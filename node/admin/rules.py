"""Routing rules at run time: the tester (which rule matches a study's headers, and why) and
switching a rule off and on (``suspensions``) without editing the TOML or restarting.

``segnode rules test PATH`` and the dashboard's rule tester (an uploaded file) both call
:func:`route_headers`, so the operator sees the decision the completion monitor would make.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TypedDict

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings
from segnode.node.admin.actors import Actor
from segnode.node.admin.errors import ConflictError, NotFoundError
from segnode.node.completion.routing import SeriesFacts, route_study, rule_keywords, without_rules
from segnode.node.receiving.header import CAPTURED_KEYWORDS, capture_attributes
from segnode.storage.audit import record_audit
from segnode.storage.database import read_only_session
from segnode.storage.models import Suspension, UserRole
from segnode.storage.suspensions import resume, suspend, suspended


class SeriesReport(TypedDict):
    series_instance_uid: str
    description: object


class EvaluationReport(TypedDict):
    rule: str
    matched: bool
    reasons: list[str]


class StudyReport(TypedDict):
    """One study's routing decision (the JSON shape of ``rules test`` and ``/api/rules/test``)."""

    study_instance_uid: str
    series: list[SeriesReport]
    action: str
    rule: str | None
    completion_profile: str
    explanation: str
    evaluations: list[EvaluationReport]


def group_headers(headers: Sequence[Dataset]) -> dict[str, dict[str, list[Dataset]]]:
    """``{study uid: {series uid: [header, ...]}}``; a header without both UIDs is left out."""
    grouped: dict[str, dict[str, list[Dataset]]] = {}
    for header in headers:
        study, series = header.get("StudyInstanceUID"), header.get("SeriesInstanceUID")
        if study and series:
            grouped.setdefault(str(study), {}).setdefault(str(series), []).append(header)
    return grouped


def route_headers(
    settings: Settings,
    studies: Mapping[str, Mapping[str, Sequence[Dataset]]],
    called_ae: str | None = None,
    calling_ae: str | None = None,
    suspended_rules: Collection[str] = (),
) -> list[StudyReport]:
    """Route each study as the node would, had it arrived at ``called_ae`` from ``calling_ae``
    (without ``suspended_rules``, as the node routes while they are suspended)."""
    keywords = CAPTURED_KEYWORDS + rule_keywords(settings.routing)
    called = called_ae or settings.listener.ae_title
    report: list[StudyReport] = []
    for study_uid, series in studies.items():
        facts = {
            series_uid: SeriesFacts(
                series_instance_uid=series_uid,
                attributes=capture_attributes(items[0], keywords),
                called_ae_titles=frozenset([called]),
                calling_ae_titles=frozenset([calling_ae] if calling_ae else []),
            )
            for series_uid, items in series.items()
        }
        decision = route_study(without_rules(settings.routing, suspended_rules), list(facts.values()))
        report.append(
            {
                "study_instance_uid": study_uid,
                "series": [
                    {
                        "series_instance_uid": uid,
                        "description": fact.attributes.get("SeriesDescription"),
                    }
                    for uid, fact in facts.items()
                ],
                "action": decision.action.value,
                "rule": decision.rule,
                "completion_profile": decision.completion_profile,
                "explanation": decision.explanation,
                "evaluations": [
                    {"rule": e.rule, "matched": e.matched, "reasons": e.reasons}
                    for e in decision.evaluations
                ],
            }
        )
    return report


def suspended_rules(sessions: sessionmaker[Session]) -> dict[str, Suspension]:
    with read_only_session(sessions) as session:
        return suspended(session, "rule")


def disable_rule(
    settings: Settings, sessions: sessionmaker[Session], actor: Actor, name: str, reason: str | None = None
) -> None:
    """Skip rule ``name`` from the next completion tick on (the next rules decide instead)."""
    actor.require(UserRole.ADMIN, "disabling a routing rule")
    _require_rule(settings, name)
    with sessions.begin() as session:
        if not suspend(session, "rule", name, actor.name, reason):
            raise ConflictError(f"rule {name!r} is already disabled")
        record_audit(session, actor.name, "rule.disable", name, client=actor.client, detail={"reason": reason})


def enable_rule(settings: Settings, sessions: sessionmaker[Session], actor: Actor, name: str) -> None:
    actor.require(UserRole.ADMIN, "enabling a routing rule")
    _require_rule(settings, name)
    with sessions.begin() as session:
        if not resume(session, "rule", name):
            raise ConflictError(f"rule {name!r} is not disabled")
        record_audit(session, actor.name, "rule.enable", name, client=actor.client)


def _require_rule(settings: Settings, name: str) -> None:
    if not any(rule.name == name for rule in settings.routing.rules):
        raise NotFoundError(f"no routing rule {name!r}")
