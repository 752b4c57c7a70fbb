"""Deciding when a study is complete.

DICOM has no end-of-series signal, so every mature node uses heuristics; this
module implements them all, per completion profile: per-series quiet time,
study quiet time, association release as a hint, required series roles, and a
forced deadline with an action. :func:`decide` is a pure function of a study
snapshot and the clock, so it is tested without threads or sleeps; the
database-backed loop that applies it lives in ``node/completion/monitor.py``.

The roles come from :func:`series_roles`, which is the pipeline's own sequence
identification run on the headers received so far: one recogniser, so a study
never waits for a "T1c" the select step would not take, or fires without one it would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from segnode.config.settings import CompletionPolicy, DeadlineAction, SelectionSettings
from segnode.pipeline.selection import RoleAssignment, identify_sequences
from segnode.pipeline.sequence_facts import SequenceFacts
from segnode.vocabulary import Role


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


def series_roles(
    series: Sequence[SequenceFacts], selection: SelectionSettings
) -> dict[str, frozenset[str]]:
    """Series Instance UID -> the role (t1, t1c, t2, flair) identification gives it, or none.

    The whole study is identified at once, as the select step does: whether a T1 is the
    T1c can depend on the other series (acquired after a contrast-enhanced one). A series
    identification rejects (a localizer, diffusion, fewer than ``min_images`` images so
    far) has no role.
    """
    return roles_of(identify_sequences(series, selection))


def roles_of(assignment: RoleAssignment) -> dict[str, frozenset[str]]:
    """Series Instance UID -> its role in an identification already made (none if rejected)."""
    return {
        candidate.facts.series_instance_uid: (
            frozenset({candidate.role.value})
            if candidate.role is not None and candidate.rejected is None
            else frozenset()
        )
        for candidate in assignment.candidates
    }


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def decide(snapshot: StudySnapshot, policy: CompletionPolicy, now: datetime) -> CompletionDecision:
    """Whether a receiving study fires now, waits, or is discarded, and why."""
    present = frozenset().union(*(series.roles for series in snapshot.series))
    required = [str(role) for role in policy.required_series]
    missing = tuple(role for role in required if role not in present)

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

    all_released = (
        snapshot.open_associations == 0
        and snapshot.last_association_closed_at is not None
        and snapshot.last_association_closed_at >= snapshot.last_received_at
    )
    if (
        policy.fire_on_release_when_complete
        and all_released
        and not missing
        and present.issuperset(role.value for role in Role)
    ):
        after_s = _seconds(now - snapshot.last_received_at)
        return CompletionDecision(
            Verdict.FIRE,
            "complete: every association that delivered to the study was released with T1, T1c, "
            f"T2 and FLAIR present; fired {after_s:.1f} s after the last instance",
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
        present_note = f"; required series {required} present" if required else ""
        return CompletionDecision(Verdict.FIRE, f"complete: {quiet_reason}{present_note}")

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


#: The ways a study fires, as metrics label them; each is recognised by the text this module
#: writes into the study's reason and the job's trigger (one home for both).
FIRE_KINDS: tuple[tuple[str, str], ...] = (
    ("completed by hand", "manual"),
    ("released with T1, T1c", "release_complete"),
    ("association release hint", "release_grace"),
    ("quiet for", "quiet"),
    ("deadline of", "deadline"),
)


def fire_kind(reason: str) -> str:
    """``manual``, ``release_complete``, ``release_grace``, ``quiet``, ``deadline`` or ``other``."""
    return next((kind for text, kind in FIRE_KINDS if text in reason), "other")
