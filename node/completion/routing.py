"""Routing rules: which studies the node processes, and with which completion profile.

Rules are data (``[[routing.rules]]`` in the configuration), evaluated by this
module: keyword lookups, string equality and regular-expression searches.
Nothing in a rule is ever executed as code. Every evaluation returns its
reasons, so ``segnode rules test`` and the study record can say why.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from segnode.config.settings import RoutingAction, RoutingRule, RoutingSettings, TagCondition


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What routing may look at for one series."""

    series_instance_uid: str
    attributes: Mapping[str, Any]
    called_ae_titles: frozenset[str] = frozenset()
    calling_ae_titles: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RuleEvaluation:
    rule: str
    matched: bool
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    action: RoutingAction
    rule: str | None
    completion_profile: str
    explanation: str
    evaluations: list[RuleEvaluation]


def rule_keywords(routing: RoutingSettings) -> tuple[str, ...]:
    """Every DICOM keyword the rules read (the receiver captures these too)."""
    keywords: set[str] = set()
    for rule in routing.rules:
        for condition in (*rule.all_of, *rule.any_of):
            keywords.update(condition.tag)
    return tuple(sorted(keywords))


def _values(attributes: Mapping[str, Any], keyword: str) -> list[str]:
    value = attributes.get(keyword)
    if value is None or value == "":
        return []
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def _test(condition: TagCondition) -> str:
    if condition.equals is not None:
        return f"equals {condition.equals!r}"
    if condition.one_of is not None:
        return f"is one of {condition.one_of}"
    if condition.matches is not None:
        return f"matches /{condition.matches}/"
    return "is present" if condition.present else "is absent"


def evaluate_condition(condition: TagCondition, attributes: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the condition holds, and a sentence saying why."""
    hits: list[str] = []
    for keyword in condition.tag:
        values = _values(attributes, keyword)
        if condition.present is not None:
            holds = bool(values) == condition.present
        elif condition.equals is not None:
            holds = condition.equals in values
        elif condition.one_of is not None:
            holds = any(value in condition.one_of for value in values)
        else:
            pattern = re.compile(condition.matches or "", re.IGNORECASE)
            holds = any(pattern.search(value) for value in values)
        if holds:
            hits.append(f"{keyword}={values[0] if values else '(absent)'!r}")
    passed = bool(hits) != condition.negate
    subject = "/".join(condition.tag)
    negation = "not " if condition.negate else ""
    found = ", ".join(hits) if hits else "no value satisfies it"
    return passed, f"{subject} {negation}{_test(condition)}: {'yes' if passed else 'no'} ({found})"


def evaluate_rule(rule: RoutingRule, facts: SeriesFacts) -> RuleEvaluation:
    reasons: list[str] = []
    matched = True
    if rule.called_ae:
        ok = bool(facts.called_ae_titles & set(rule.called_ae))
        reasons.append(
            f"called AE {sorted(facts.called_ae_titles)} in {rule.called_ae}: {'yes' if ok else 'no'}"
        )
        matched &= ok
    if rule.calling_ae:
        ok = bool(facts.calling_ae_titles & set(rule.calling_ae))
        reasons.append(
            f"calling AE {sorted(facts.calling_ae_titles)} in {rule.calling_ae}: "
            f"{'yes' if ok else 'no'}"
        )
        matched &= ok
    for condition in rule.all_of:
        ok, reason = evaluate_condition(condition, facts.attributes)
        reasons.append(f"all_of: {reason}")
        matched &= ok
    if rule.any_of:
        results = [evaluate_condition(condition, facts.attributes) for condition in rule.any_of]
        reasons.extend(f"any_of: {reason}" for _, reason in results)
        matched &= any(ok for ok, _ in results)
    return RuleEvaluation(rule.name, matched, reasons)


def without_rules(routing: RoutingSettings, suspended: Collection[str]) -> RoutingSettings:
    """The routing with the suspended rules left out (the rest keep their order)."""
    if not suspended:
        return routing
    return routing.model_copy(update={"rules": [r for r in routing.rules if r.name not in suspended]})


def route_study(routing: RoutingSettings, series: Sequence[SeriesFacts]) -> RoutingDecision:
    """The first rule (in configuration order) that matches any series of the study."""
    evaluations: list[RuleEvaluation] = []
    for rule in routing.rules:
        for facts in series:
            evaluation = evaluate_rule(rule, facts)
            evaluations.append(evaluation)
            if evaluation.matched:
                return RoutingDecision(
                    action=rule.action,
                    rule=rule.name,
                    completion_profile=rule.completion,
                    explanation=f"rule {rule.name!r} matched series {facts.series_instance_uid}",
                    evaluations=evaluations,
                )
    return RoutingDecision(
        action=routing.default_action,
        rule=None,
        completion_profile="default",
        explanation=f"no rule matched; default action {routing.default_action.value!r}",
        evaluations=evaluations,
    )
