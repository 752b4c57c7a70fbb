"""``segnode rules test``: which routing rule matches each study in a folder, and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, TypedDict

import typer

from segnode.node.cli.options import ConfigOption, JsonOption, settings_or_exit
from segnode.node.cli.study_folder import read_headers
from segnode.node.completion.routing import SeriesFacts, route_study, rule_keywords
from segnode.node.receiving.header import CAPTURED_KEYWORDS, capture_attributes

rules_app = typer.Typer(no_args_is_help=True, help="Routing rules.")


def register(app: typer.Typer) -> None:
    """Add the ``rules`` command group to the segnode app."""
    app.add_typer(rules_app, name="rules")


class _SeriesReport(TypedDict):
    series_instance_uid: str
    description: object


class _EvaluationReport(TypedDict):
    rule: str
    matched: bool
    reasons: list[str]


class _StudyReport(TypedDict):
    """One study's entry in ``segnode rules test`` output (also its JSON shape)."""

    study_instance_uid: str
    series: list[_SeriesReport]
    action: str
    rule: str | None
    completion_profile: str
    explanation: str
    evaluations: list[_EvaluationReport]


@rules_app.command("test")
def rules_test(
    path: Annotated[Path, typer.Argument(help="A DICOM file or a folder of them.")],
    config: ConfigOption = None,
    called_ae: Annotated[
        str | None, typer.Option("--called-ae", help="Pretend it was sent to this AE title.")
    ] = None,
    calling_ae: Annotated[
        str | None, typer.Option("--calling-ae", help="Pretend it came from this AE title.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show which routing rule matches each study in PATH, and why."""
    settings = settings_or_exit(config)
    keywords = CAPTURED_KEYWORDS + rule_keywords(settings.routing)
    called = called_ae or settings.listener.ae_title
    headers, skipped = read_headers(path)
    studies = {
        study_uid: {
            series_uid: SeriesFacts(
                series_instance_uid=series_uid,
                attributes=capture_attributes(items[0][1], keywords),
                called_ae_titles=frozenset([called]),
                calling_ae_titles=frozenset([calling_ae] if calling_ae else []),
            )
            for series_uid, items in series.items()
        }
        for study_uid, series in headers.items()
    }
    report: list[_StudyReport] = []
    for study_uid, series in studies.items():
        decision = route_study(settings.routing, list(series.values()))
        report.append(
            {
                "study_instance_uid": study_uid,
                "series": [
                    {
                        "series_instance_uid": uid,
                        "description": facts.attributes.get("SeriesDescription"),
                    }
                    for uid, facts in series.items()
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
    if as_json:
        typer.echo(json.dumps({"studies": report, "unreadable_files": skipped}, indent=2))
        return
    for entry in report:
        typer.echo(f"study {entry['study_instance_uid']}: {entry['action'].upper()}")
        typer.echo(f"  {entry['explanation']} (completion profile {entry['completion_profile']!r})")
        for evaluation in entry["evaluations"]:
            mark = "MATCH" if evaluation["matched"] else "no"
            typer.echo(f"  rule {evaluation['rule']!r}: {mark}")
            for reason in evaluation["reasons"]:
                typer.echo(f"      {reason}")
    if skipped:
        typer.echo(f"{skipped} file(s) were not readable DICOM and were skipped", err=True)
