"""The completion heuristics, as a pure function of a study snapshot and the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from segnode.config.settings import CompletionPolicy, CompletionSettings, DeadlineAction
from segnode.node.completion.rule import SeriesTiming, StudySnapshot, Verdict, decide, series_roles

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
ROLES = CompletionSettings().role_patterns


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def snapshot(series_last: dict[str, float], roles: dict[str, set[str]] | None = None,
             open_associations: int = 1, closed_at: float | None = None) -> StudySnapshot:
    roles = roles or {}
    return StudySnapshot(
        receiving_since=T0,
        last_received_at=at(max(series_last.values())),
        series=tuple(
            SeriesTiming(uid, at(last), frozenset(roles.get(uid, set())))
            for uid, last in series_last.items()
        ),
        open_associations=open_associations,
        last_association_closed_at=None if closed_at is None else at(closed_at),
    )


POLICY = CompletionPolicy(series_quiet_s=30, study_quiet_s=60, release_grace_s=10, deadline_s=3600)


def test_waits_while_any_series_is_recent() -> None:
    study = snapshot({"s1": 0, "s2": 50})
    assert decide(study, POLICY, at(79)).verdict is Verdict.WAIT
    assert decide(study, POLICY, at(110)).verdict is Verdict.FIRE


def test_study_quiet_time_applies_after_series_quiet_time() -> None:
    study = snapshot({"s1": 0})
    assert decide(study, POLICY, at(45)).verdict is Verdict.WAIT  # series quiet, study not yet
    decision = decide(study, POLICY, at(61))
    assert decision.verdict is Verdict.FIRE
    assert "all 1 series quiet" in decision.reason


def test_association_release_hint_fires_early_after_the_grace() -> None:
    study = snapshot({"s1": 0}, open_associations=0, closed_at=1)
    assert decide(study, POLICY, at(5)).verdict is Verdict.WAIT
    decision = decide(study, POLICY, at(11.5))
    assert decision.verdict is Verdict.FIRE
    assert "association release hint" in decision.reason


def test_release_hint_ignored_while_an_association_is_open_or_when_disabled() -> None:
    assert decide(snapshot({"s1": 0}, open_associations=1, closed_at=1), POLICY, at(20)).verdict is Verdict.WAIT
    no_hint = POLICY.model_copy(update={"association_release_hint": False})
    assert decide(snapshot({"s1": 0}, open_associations=0, closed_at=1), no_hint, at(20)).verdict is Verdict.WAIT


def test_required_series_hold_the_study_until_present() -> None:
    policy = POLICY.model_copy(update={"required_series": ["t1", "t1c", "t2", "flair"]})
    partial = snapshot({"a": 0, "b": 0}, roles={"a": {"t1"}, "b": {"t1c"}})
    decision = decide(partial, policy, at(500))
    assert decision.verdict is Verdict.WAIT
    assert decision.missing_roles == ("t2", "flair")
    full = snapshot({"a": 0, "b": 0, "c": 0, "d": 0},
                    roles={"a": {"t1"}, "b": {"t1c"}, "c": {"t2"}, "d": {"flair"}})
    fired = decide(full, policy, at(61))
    assert fired.verdict is Verdict.FIRE and "required series" in fired.reason


def test_deadline_actions() -> None:
    policy = POLICY.model_copy(update={"required_series": ["flair"], "deadline_s": 600})
    study = snapshot({"a": 0}, roles={"a": {"t1"}})
    proceed = decide(study, policy, at(601))
    assert proceed.verdict is Verdict.FIRE and proceed.deadline_passed
    assert "missing required series ['flair']" in proceed.reason
    discard = decide(study, policy.model_copy(update={"deadline_action": DeadlineAction.DISCARD}), at(601))
    assert discard.verdict is Verdict.DISCARD
    wait = decide(study, policy.model_copy(update={"deadline_action": DeadlineAction.WAIT}), at(601))
    assert wait.verdict is Verdict.WAIT and wait.deadline_passed


def test_deadline_forces_a_study_that_never_goes_quiet() -> None:
    policy = POLICY.model_copy(update={"deadline_s": 600})
    study = snapshot({"a": 599})
    assert decide(study, policy, at(600)).verdict is Verdict.FIRE


def test_series_roles_from_descriptions() -> None:
    def roles(description: str) -> set[str]:
        return set(series_roles({"SeriesDescription": description}, ROLES))

    assert roles("T1_AX_SE") == {"t1"}
    assert roles("MRHR_T1_AX_POST_GAD_SE") == {"t1c"}
    assert roles("t1_mprage_sag_KM") == {"t1c"}
    assert roles("MRHR_T2_AX_SE") == {"t2"}
    assert roles("MRHR_FLAIR_AX_SE_IR") == {"flair"}
    assert roles("localizer") == set()
