"""The ``segnode`` command line (typer): one module per command or command group.

Each command module has a ``register(app)``; this package builds the app from them, in the
order ``segnode --help`` lists them. Each command loads the configuration once and passes it
down; nothing reads global state. Tests call these commands through typer's ``CliRunner``.
"""

from __future__ import annotations

import sys

import typer

from segnode.node.cli import (
    config,
    cv,
    db,
    evaluate,
    inspect,
    jobs,
    models,
    predict,
    rules,
    run,
    serve,
    studies,
    train,
    users,
    worker,
)

app = typer.Typer(no_args_is_help=True, help="segnode: DICOM brain-tumour segmentation node.")

for _module in (
    serve, worker, config, db, users, rules, inspect, studies, jobs, run, train, predict, evaluate, models, cv,
):
    _module.register(app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
