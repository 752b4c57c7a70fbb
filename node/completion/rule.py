"""Deciding when a study is complete.

DICOM has no end-of-series signal, so every mature node uses heuristics; this
module implements them all, per completion profile: per-series quiet time,
study quiet time, association release as a hint, required series roles, and a
forced deadline with an action. :func:`decide` is a pure function of a study
snapshot and the clock, so it is tested without threads or sleeps; the
database-backed loop that applies it lives in ``node/completion/monitor.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from segnode.config.settings import CompletionPolicy, DeadlineAction


class Verdict(StrEnum):
    WAIT = "wait"
    FIRE = "fire"
    DISCARD = "discard"


@dataclass(frozen=True, slots=True)
class SeriesTiming:
    series_instance_uid: str
    last_received_at: datetime
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class StudySnapshot:
    receiving_since: datetime
    """When the study (re)entered the receiving state; the deadline counts from here."""
    last_received_at: datetime
    series: tuple[SeriesTiming, ...]
    open_associations: int
    last_association_closed_at: datetime | None


@dataclass(frozen=True, slots=True)
class CompletionDecision:
    verdict: Verdict
    reason: str
    deadline_passed: bool = False
    missing_roles: tuple[str, ...] = ()


def series_roles(attributes: Mapping[str, Any], role_patterns: Mapping[str, str]) -> frozenset[str]:
    """Roles (t1, t1c, ...) a series looks like from its description and protocol name.

    A quick recogniser for the "required series" trigger while a study is still
    arriving; the pipeline's sequence identification makes the real choice.
    """
    text = " ".join(
        str(attributes.get(keyword) or "") for keyword in ("SeriesDescription", "ProtocolName")
    )
    roles = {role for role, pattern in role_patterns.items() if re.search(pattern, text)}
    # A post-contrast T1 is not also the plain T1.
    if "t1c" in roles:
        roles.discard("t1")
    return frozenset(roles)


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def decide(snapshot: StudySnapshot, policy: CompletionPolicy, now: datetime) -> CompletionDecision:
    """Whether a receiving study fires now, waits, or is discarded, and why."""
    present = frozenset().union(*(series.roles for series in snapshot.series))
    missing = tuple(role for role in policy.required_series if role not in present)

    quiet_series = [
        series
        for series in snapshot.series
        if _seconds(now - series.last_received_at) >= policy.series_quiet_s
    ]
    all_series_quiet = len(quiet_series) == len(snapshot.series)
    study_idle_s = _seconds(now - snapshot.last_received_at)
    study_quiet = study_idle_s >= policy.study_quiet_s

    released = (
        policy.association_release_hint
        and snapshot.open_associations == 0
        and snapshot.last_association_closed_at is not None
        and snapshot.last_association_closed_at >= snapshot.last_received_at
        and _seconds(now - snapshot.last_association_closed_at) >= policy.release_grace_s
    )

    quiet_reason = None
    if all_series_quiet and study_quiet:
        quiet_reason = (
            f"all {len(snapshot.series)} series quiet for >= {policy.series_quiet_s:g} s "
            f"and the study for {study_idle_s:.0f} s (>= {policy.study_quiet_s:g} s)"
        )
    elif released:
        quiet_reason = (
            "every association that delivered to the study was released "
            f">= {policy.release_grace_s:g} s ago (association release hint)"
        )

    if quiet_reason is not None and not missing:
        required = (
            f"; required series {list(policy.required_series)} present"
            if policy.required_series
            else ""
        )
        return CompletionDecision(Verdict.FIRE, f"complete: {quiet_reason}{required}")

    deadline = snapshot.receiving_since + timedelta(seconds=policy.deadline_s)
    if now < deadline:
        waiting_for = f"required series {list(missing)}" if missing else "quiet time"
        return CompletionDecision(Verdict.WAIT, f"waiting for {waiting_for}", missing_roles=missing)

    state = f"missing required series {list(missing)}" if missing else "still receiving"
    summary = f"deadline of {policy.deadline_s:g} s passed ({state})"
    if policy.deadline_action is DeadlineAction.PROCEED:
        return CompletionDecision(
            Verdict.FIRE, f"{summary}; proceeding", deadline_passed=True, missing_roles=missing
        )
    if policy.deadline_action is DeadlineAction.DISCARD:
        return CompletionDecision(
            Verdict.DISCARD, f"{summary}; discarded", deadline_passed=True, missing_roles=missing
        )
    return CompletionDecision(
        Verdict.WAIT, f"{summary}; waiting on", deadline_passed=True, missing_roles=missing
    )
