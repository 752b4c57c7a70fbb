"""``segnode rules test``: which routing rule matches each study in a folder, and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from segnode.node.admin.rules import route_headers
from segnode.node.cli.options import ConfigOption, JsonOption, settings_or_exit
from segnode.node.cli.study_folder import read_headers

rules_app = typer.Typer(no_args_is_help=True, help="Routing rules.")


def register(app: typer.Typer) -> None:
    """Add the ``rules`` command group to the segnode app."""
    app.add_typer(rules_app, name="rules")


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
    headers, skipped = read_headers(path)
    report = route_headers(
        settings,
        {
            study: {series: [header for _, header in items] for series, items in entries.items()}
            for study, entries in headers.items()
        },
        called_ae,
        calling_ae,
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
