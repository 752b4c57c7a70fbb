"""``segnode inspect``: a folder's studies and series, and which are taken as T1, T1c, T2 and FLAIR."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from segnode.node.cli.options import ConfigOption, JsonOption, settings_or_exit


def inspect(
    path: Annotated[Path, typer.Argument(help="A folder of DICOM files (one or more studies).")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a study's series and which are taken as T1, T1c, T2 and FLAIR, and why."""
    from segnode.node.cli.study_folder import read_study_folder
    from segnode.pipeline.selection import identify_sequences

    settings = settings_or_exit(config)
    studies, unreadable = read_study_folder(path)
    report = []
    for study_uid, series in studies.items():
        assignment = identify_sequences(series, settings.selection)
        report.append({"study_instance_uid": study_uid, **assignment.as_record()})
    if as_json:
        typer.echo(json.dumps({"studies": report, "unreadable_files": unreadable}, indent=2))
        return
    for study in report:
        typer.echo(f"study {study['study_instance_uid']}")
        for role, chosen in study["roles"].items():  # type: ignore[attr-defined]
            described = (
                f"{chosen['series_description']!r} {chosen['series_instance_uid']}"
                if chosen
                else "MISSING"
            )
            typer.echo(f"  {role.upper():<6} {described}")
        for candidate in study["candidates"]:  # type: ignore[attr-defined]
            verdict = (
                candidate["rejected"]
                and f"rejected: {candidate['rejected']}"
                or "; ".join(candidate["reasons"])
            )
            typer.echo(
                f"    #{candidate['series_number']} {candidate['series_description']!r}: {verdict}"
            )
    if unreadable:
        typer.echo(f"{unreadable} file(s) were not readable DICOM and were skipped", err=True)


def register(app: typer.Typer) -> None:
    """Add ``inspect`` to the segnode app."""
    app.command()(inspect)
