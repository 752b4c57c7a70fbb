"""``segnode users``: the first administrator, roles, tokens; passwords never on the command line."""

from __future__ import annotations

import stat
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner, Result

from segnode.config.settings import load_settings
from segnode.config.web import WebSettings
from segnode.node.admin.accounts import ensure_first_admin, sign_in, token_actor
from segnode.node.cli import app
from segnode.node.service import open_storage
from segnode.storage.models import ApiToken, AuditEvent, User, UserRole


def segnode(data_dir: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)], input=stdin)


def test_users_are_added_with_a_role_and_sign_in_with_the_password_from_stdin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert segnode(data, "db", "upgrade").exit_code == 0
    added = segnode(data, "users", "add", "rita", "--role", "operator", "--password-stdin",
                    stdin="a long enough password\n")
    assert added.exit_code == 0 and "user 'rita' added as operator" in added.output
    short = segnode(data, "users", "add", "sam", "--password-stdin", stdin="short\n")
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    assert segnode(data, "users", "add", "rita", "--password-stdin", stdin="another long one!\n").exit_code == 1
    assert segnode(data, "users", "role", "rita", "admin").exit_code == 0

    settings = load_settings(None, {"storage": {"data_dir": str(data)}})
    _, sessions, _ = open_storage(settings)
    actor = sign_in(sessions, WebSettings(), "rita", "a long enough password", "127.0.0.1")
    assert (actor.name, actor.role) == ("rita", UserRole.ADMIN)
    with sessions() as session:
        user = session.execute(select(User).where(User.username == "rita")).scalar_one()
    assert user.password_hash is not None and user.password_hash.startswith("$argon2id$")
    assert "a long enough password" not in user.password_hash

    token = segnode(data, "users", "token", "rita", "--name", "prometheus").output.strip()
    assert token.startswith("sgn_") and token_actor(sessions, token, None) is not None
    with sessions() as session:
        stored = session.execute(select(ApiToken)).scalar_one()
        actions = session.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars().all()
    assert stored.token_sha256 != token and len(stored.token_sha256) == 64
    assert actions == ["user.add", "user.change", "login", "token.create"]

    assert segnode(data, "users", "disable", "rita").exit_code == 0
    assert token_actor(sessions, token, None) is None  # a disabled user's tokens stop at once
    listed = segnode(data, "users", "list")
    assert "rita" in listed.output and "disabled" in listed.output


def test_a_fresh_node_gets_one_admin_whose_password_only_its_owner_can_read(tmp_path: Path) -> None:
    settings = load_settings(None, {"storage": {"data_dir": str(tmp_path / "data")}})
    _, sessions, _ = open_storage(settings)
    path = ensure_first_admin(sessions, settings.storage.data_dir)
    assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600
    actor = sign_in(sessions, WebSettings(), "admin", path.read_text().strip(), None)
    assert actor.role is UserRole.ADMIN
    assert ensure_first_admin(sessions, settings.storage.data_dir) is None  # once only
