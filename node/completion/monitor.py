"""The loop that applies completion decisions to the studies in the database.

Why the database and not memory: every timer is derived from stored times
(last instance, association close), so after a restart the monitor simply
carries on. Each tick reads a study (``segnode.storage.studies.receiving_study``),
decides with the pure rule (``segnode.node.completion.rule.decide``) and routing, and
concludes it with an optimistic state change (``conclude_study``): an instance that arrives
while the monitor decides wins, and two monitors sharing one PostgreSQL cannot both fire.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import (
    CompletionSettings,
    LateSeriesPolicy,
    RoutingAction,
    RoutingSettings,
    SelectionSettings,
)
from segnode.node.completion.routing import RoutingDecision, SeriesFacts, route_study, without_rules
from segnode.node.completion.rule import (
    CompletionDecision,
    SeriesTiming,
    StudySnapshot,
    Verdict,
    decide,
    roles_of,
)
from segnode.node.logs import log_context
from segnode.pipeline.selection import RoleAssignment, identify_sequences
from segnode.pipeline.sequence_facts import SequenceFacts, facts_from_attributes
from segnode.storage.events import record_node_event
from segnode.storage.job_states import JobState
from segnode.storage.jobs import append_job_event, attach_series, create_job, latest_job
from segnode.storage.models import StudyState, utc_now
from segnode.storage.studies import (
    ReceivingStudy,
    conclude_study,
    receiving_study,
    receiving_study_ids,
    record_deadline_passed,
)
from segnode.storage.suspensions import suspended

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StudyOutcome:
    """What one tick did to one study (for tests and the log)."""

    study_id: int
    verdict: Verdict
    new_state: str | None
    reason: str
    job_id: int | None = None


class CompletionMonitor:
    """Evaluates receiving studies every ``check_interval_s`` (or when woken)."""

    def __init__(
        self,
        completion: CompletionSettings,
        routing: RoutingSettings,
        sessions: sessionmaker[Session],
        selection: SelectionSettings | None = None,
        on_job: Callable[[], None] | None = None,
    ) -> None:
        self._on_job = on_job
        """Called after a tick created or extended a job (the job runner's wake)."""
        self._completion = completion
        self._routing = routing
        self._selection = selection or SelectionSettings()
        self._sessions = sessions
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Re-evaluate soon (an association just closed)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="completion-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the monitor must outlive one bad tick
                log.exception("completion tick failed; retrying next interval")
            self._wake.wait(self._completion.check_interval_s)
            self._wake.clear()

    def tick(self, now: datetime | None = None) -> list[StudyOutcome]:
        """Evaluate every study in ``receiving`` once."""
        now = now or utc_now()
        with self._sessions() as session:
            study_ids = receiving_study_ids(session)
        outcomes = []
        for study_id in study_ids:
            with log_context(study_id=study_id):
                outcome = self._evaluate(study_id, now)
            if outcome is not None:
                outcomes.append(outcome)
        if self._on_job is not None and any(o.job_id is not None for o in outcomes):
            self._on_job()
        return outcomes

    @staticmethod
    def _series_facts(study: ReceivingStudy) -> list[SeriesFacts]:
        return [
            SeriesFacts(
                series_instance_uid=series.series_instance_uid,
                attributes=series.attributes,
                called_ae_titles=series.called_ae_titles,
                calling_ae_titles=series.calling_ae_titles,
            )
            for series in study.series
        ]

    @staticmethod
    def _sequence_facts(study: ReceivingStudy) -> list[SequenceFacts]:
        """What sequence identification reads, from the headers captured at receive time."""
        return [
            facts_from_attributes(
                series.series_instance_uid,
                series.attributes,
                series.instance_count * int(series.attributes.get("NumberOfFrames") or 1),
            )
            for series in study.series
        ]

    def _snapshot(self, study: ReceivingStudy, assignment: RoleAssignment) -> StudySnapshot:
        roles = roles_of(assignment)
        return StudySnapshot(
            receiving_since=study.receiving_since,
            last_received_at=study.last_received_at,
            series=tuple(
                SeriesTiming(
                    series.series_instance_uid,
                    series.last_received_at,
                    roles[series.series_instance_uid],
                )
                for series in study.series
            ),
            open_associations=study.open_associations,
            last_association_closed_at=study.last_association_closed_at,
        )

    def _evaluate(self, study_id: int, now: datetime) -> StudyOutcome | None:
        with self._sessions.begin() as session:
            study = receiving_study(session, study_id)
            if study is None:
                return None
            # A rule suspended from the dashboard is skipped from the next tick on.
            routing = without_rules(self._routing, suspended(session, "rule"))
            route = route_study(routing, self._series_facts(study))
            policy = self._completion.profiles[route.completion_profile]
            # Identified once per evaluation: the roles decide completion, and the same
            # identification is recorded with the job when the study fires.
            assignment = identify_sequences(self._sequence_facts(study), self._selection)
            decision = decide(self._snapshot(study, assignment), policy, now)
            if decision.verdict is Verdict.WAIT and study.force_complete_by is not None:
                decision = CompletionDecision(
                    Verdict.FIRE, f"completed by hand by {study.force_complete_by}"
                )

            if decision.verdict is Verdict.WAIT:
                if (
                    decision.deadline_passed
                    and study.deadline_passed_at is None
                    and record_deadline_passed(session, study_id, now, decision.reason)
                ):
                    log.warning(
                        "study deadline passed; waiting on", extra={"reason": decision.reason}
                    )
                return None
            return self._conclude(session, study, route, decision, assignment, now)

    def _conclude(
        self,
        session: Session,
        study: ReceivingStudy,
        route: RoutingDecision,
        decision: CompletionDecision,
        assignment: RoleAssignment,
        now: datetime,
    ) -> StudyOutcome | None:
        if decision.verdict is Verdict.DISCARD:
            new_state, reason = StudyState.DISCARDED, decision.reason
        elif route.action is RoutingAction.IGNORE:
            new_state = StudyState.IGNORED
            reason = f"{decision.reason}; not processed: {route.explanation}"
        else:
            new_state, reason = StudyState.COMPLETE, f"{decision.reason}; {route.explanation}"

        if not conclude_study(session, study, new_state, reason=reason, rule=route.rule, at=now):
            return None  # an instance arrived meanwhile, or another node decided

        detail: dict[str, object] = {
            "reason": reason,
            "rule": route.rule,
            "missing_roles": list(decision.missing_roles),
            "rules_evaluated": [
                {"rule": e.rule, "matched": e.matched, "reasons": e.reasons}
                for e in route.evaluations
            ],
        }
        job_id = None
        if new_state == StudyState.COMPLETE:
            job_id = self._job_for(session, study, reason, route.rule, detail, assignment)
        record_node_event(
            session, f"study_{new_state}", detail | {"job_id": job_id}, study_id=study.study_id
        )
        # The routing explanation names the matched Series Instance UID: DEBUG only
        # (the full reason is in the study row and its node event).
        log.info(
            "study %s",
            new_state,
            extra={"reason": decision.reason, "rule": route.rule, "job_id": job_id},
        )
        log.debug("study routed", extra={"explanation": route.explanation})
        return StudyOutcome(study.study_id, decision.verdict, new_state, reason, job_id)

    def _job_for(
        self,
        session: Session,
        study: ReceivingStudy,
        reason: str,
        rule: str | None,
        detail: dict[str, object],
        assignment: RoleAssignment,
    ) -> int:
        series_ids = [series.series_id for series in study.series]
        previous = latest_job(session, study.study_id)
        late_policy = self._completion.late_series
        if (
            previous is not None
            and late_policy is LateSeriesPolicy.ATTACH
            and previous.state == JobState.RECEIVED
        ):
            attach_series(session, previous, series_ids, f"late series attached: {reason}")
            return previous.id
        if previous is not None:
            detail = detail | {
                "previous_job_id": previous.id,
                "late_series_policy": late_policy.value,
            }
        job = create_job(
            session,
            study_id=study.study_id,
            trigger=reason,
            routing_rule=rule,
            series_ids=series_ids,
            detail=detail,
        )
        append_job_event(session, job.id, "selection", assignment.as_record())
        return job.id
