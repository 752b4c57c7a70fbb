"""``segnode users``: the dashboard's and the API's users and tokens, from the node's shell.

The first administrator is made here (``segnode users add NAME --role admin``): whoever
can run segnode on the node's machine can read its database, so the command line acts as
an admin (audited as ``cli:<login>``). Passwords are read from a prompt or, with
``--password-stdin``, from standard input (never from the command line, which ``ps``
shows to every user).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from segnode.node.admin import accounts
from segnode.node.admin.actors import command_line_actor
from segnode.node.admin.errors import AdminError
from segnode.node.cli.options import ConfigOption, DataDirOption, JsonOption, open_sessions
from segnode.storage.models import UserRole

users_app = typer.Typer(no_args_is_help=True, help="Dashboard and API users, roles and tokens.")
RoleOption = Annotated[UserRole, typer.Option("--role", help="viewer, operator or admin.")]
StdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


def _fail(exc: AdminError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@users_app.command("add")
def add(
    username: str,
    role: RoleOption = UserRole.VIEWER,
    oidc_only: Annotated[
        bool, typer.Option("--oidc-only", help="No password: signs in through the identity provider.")
    ] = False,
    password_stdin: StdinOption = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Add a user."""
    sessions = open_sessions(config, data_dir)
    password = None if oidc_only else _password(password_stdin)
    try:
        user = accounts.add_user(sessions, command_line_actor(), username, role, password)
    except AdminError as exc:
        raise _fail(exc) from exc
    typer.echo(f"user {user.username!r} added as {user.role.value}")


@users_app.command("list")
def list_users(config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """List users."""
    rows = accounts.users(open_sessions(config, data_dir), command_line_actor())
    if as_json:
        typer.echo(json.dumps([accounts_json(row) for row in rows], indent=2))
        return
    for row in rows:
        state = "disabled" if row.disabled else "active"
        typer.echo(f"{row.username:<24} {row.role.value:<9} {state:<9} last sign-in {row.last_login_at or '-'}")


def accounts_json(row: accounts.UserView) -> dict[str, object]:
    return {
        "username": row.username, "role": row.role.value, "disabled": row.disabled,
        "local_password": row.local_password, "oidc": row.oidc, "last_login_at": row.last_login_at,
    }


@users_app.command("role")
def set_role(
    username: str, role: Annotated[UserRole, typer.Argument(help="viewer, operator or admin.")],
    config: ConfigOption = None, data_dir: DataDirOption = None,
) -> None:
    """Change a user's role."""
    _change(config, data_dir, username, role=role)
    typer.echo(f"user {username!r} is now {role.value}")


@users_app.command("passwd")
def passwd(
    username: str, password_stdin: StdinOption = False, config: ConfigOption = None, data_dir: DataDirOption = None
) -> None:
    """Set a user's password."""
    _change(config, data_dir, username, password=_password(password_stdin))
    typer.echo(f"user {username!r}: password changed")


@users_app.command("disable")
def disable(username: str, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Stop a user signing in (their sessions and tokens stop working at once)."""
    _change(config, data_dir, username, disabled=True)
    typer.echo(f"user {username!r} disabled")


@users_app.command("enable")
def enable(username: str, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Let a disabled user sign in again."""
    _change(config, data_dir, username, disabled=False)
    typer.echo(f"user {username!r} enabled")


@users_app.command("token")
def token(
    username: str,
    name: Annotated[str, typer.Option("--name", help="What the token is for (e.g. prometheus).")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create an API token for USERNAME (printed once; only its hash is kept)."""
    try:
        value = accounts.create_token(open_sessions(config, data_dir), command_line_actor(), username, name)
    except AdminError as exc:
        raise _fail(exc) from exc
    typer.echo(value)


def _change(
    config: ConfigOption,
    data_dir: DataDirOption,
    username: str,
    *,
    role: UserRole | None = None,
    password: str | None = None,
    disabled: bool | None = None,
) -> None:
    try:
        accounts.change_user(
            open_sessions(config, data_dir), command_line_actor(), username,
            role=role, password=password, disabled=disabled,
        )
    except AdminError as exc:
        raise _fail(exc) from exc
