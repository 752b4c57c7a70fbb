"""The routing rule tester: which rule matches a study's headers, and why.

``segnode rules test PATH`` and the dashboard's rule tester (an uploaded file) both call
:func:`route_headers`, so the operator sees the decision the completion monitor would make.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

from pydicom.dataset import Dataset

from segnode.config.settings import Settings
from segnode.node.completion.routing import SeriesFacts, route_study, rule_keywords
from segnode.node.receiving.header import CAPTURED_KEYWORDS, capture_attributes


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
) -> list[StudyReport]:
    """Route each study as the node would, had it arrived at ``called_ae`` from ``calling_ae``."""
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
        decision = route_study(settings.routing, list(facts.values()))
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
