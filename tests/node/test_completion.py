"""The completion heuristics, as a pure function of a study snapshot and the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from segnode.config.settings import CompletionPolicy, DeadlineAction, SelectionSettings
from segnode.node.completion.rule import SeriesTiming, StudySnapshot, Verdict, decide, series_roles
from segnode.pipeline.sequence_facts import SequenceFacts, facts_from_attributes

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
SELECTION = SelectionSettings()


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


def _series(uid: str, images: int = 20, **attributes: Any) -> SequenceFacts:
    """A series as the completion monitor sees it: the captured header attributes."""
    return facts_from_attributes(uid, {"Modality": "MR", **attributes}, images)


def test_series_roles_from_descriptions() -> None:
    """Without physics tags the words decide, as in the select step ([selection] patterns)."""

    def roles(description: str) -> set[str]:
        return set(series_roles([_series("1", SeriesDescription=description)], SELECTION)["1"])

    assert roles("T1_AX_SE") == {"t1"}
    assert roles("MRHR_T1_AX_POST_GAD_SE") == {"t1c"}
    assert roles("t1_mprage_sag_KM") == {"t1c"}
    assert roles("MRHR_T2_AX_SE") == {"t2"}
    assert roles("MRHR_FLAIR_AX_SE_IR") == {"flair"}
    assert roles("localizer") == set()


def test_series_roles_are_the_select_steps_roles() -> None:
    """Physics first, contrast by evidence, the study as a whole: one recogniser for both."""
    study = [
        _series("t1", RepetitionTime="450", EchoTime="9", SeriesDescription="ax se", SeriesTime="100000"),
        _series("t1c", RepetitionTime="450", EchoTime="9", SeriesDescription="ax se", SeriesTime="101000",
                ContrastBolusAgent="Gadovist"),
        # No contrast tag and no words: T1c only because it follows a post-contrast series.
        _series("late", RepetitionTime="2000", EchoTime="3", InversionTime="900", SeriesTime="102000",
                SeriesDescription="sag 3d"),
        _series("t2", RepetitionTime="4000", EchoTime="100", SeriesDescription="t1 by mistake"),
        _series("flair", RepetitionTime="9000", EchoTime="120", InversionTime="2500", ScanningSequence="SE\\IR"),
        _series("dwi", RepetitionTime="5000", EchoTime="90", ScanningSequence="EP", SeriesDescription="t2"),
        _series("partial", images=5, RepetitionTime="4000", EchoTime="100"),  # still arriving
    ]
    assert series_roles(study, SELECTION) == {
        "t1": {"t1"}, "t1c": {"t1c"}, "late": {"t1c"}, "t2": {"t2"}, "flair": {"flair"},
        "dwi": set(), "partial": set(),
    }


def test_a_t1_without_contrast_evidence_never_satisfies_t1c() -> None:
    policy = POLICY.model_copy(update={"required_series": ["t1", "t1c"]})
    roles = series_roles([_series("a", RepetitionTime="450", EchoTime="9"),
                          _series("b", RepetitionTime="460", EchoTime="9", SeriesTime="2")], SELECTION)
    study = snapshot({"a": 0, "b": 0}, roles={uid: set(found) for uid, found in roles.items()})
    decision = decide(study, policy, at(61))
    assert decision.verdict is Verdict.WAIT and decision.missing_roles == ("t1c",)


ALL_FOUR = {"a": {"t1"}, "b": {"t1c"}, "c": {"t2"}, "d": {"flair"}}


def test_a_released_study_with_all_four_sequences_fires_at_once() -> None:
    study = snapshot({"a": 0, "b": 1, "c": 2, "d": 3.0}, roles=ALL_FOUR, open_associations=0, closed_at=3.2)
    decision = decide(study, POLICY, at(3.5))  # no quiet time, no grace
    assert decision.verdict is Verdict.FIRE
    assert "released with T1, T1c, T2 and FLAIR present" in decision.reason
    assert decision.reason.endswith("fired 0.5 s after the last instance")


def test_release_alone_is_not_enough_without_all_four_or_while_one_is_open() -> None:
    three = {uid: roles for uid, roles in ALL_FOUR.items() if uid != "d"}
    partial = snapshot({"a": 0, "b": 1, "c": 2}, roles=three, open_associations=0, closed_at=3)
    assert decide(partial, POLICY, at(4)).verdict is Verdict.WAIT  # the grace still applies
    assert decide(partial, POLICY, at(13.5)).verdict is Verdict.FIRE  # the old hint, after the grace
    still_open = snapshot({"a": 0, "b": 1, "c": 2, "d": 3}, roles=ALL_FOUR, open_associations=1, closed_at=3)
    assert decide(still_open, POLICY, at(4)).verdict is Verdict.WAIT
    # An instance after the last release (a second association under way, not yet recorded).
    later = snapshot({"a": 0, "b": 1, "c": 2, "d": 5}, roles=ALL_FOUR, open_associations=0, closed_at=3)
    assert decide(later, POLICY, at(5.5)).verdict is Verdict.WAIT
    off = POLICY.model_copy(update={"fire_on_release_when_complete": False})
    released = snapshot({"a": 0, "b": 1, "c": 2, "d": 3}, roles=ALL_FOUR, open_associations=0, closed_at=3)
    assert decide(released, off, at(4)).verdict is Verdict.WAIT
