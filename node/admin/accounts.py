"""Users, passwords, API tokens and sign-in (local and OpenID Connect).

Why argon2id (``argon2-cffi``, OWASP's first choice): memory-hard, salted, and its encoded
hash carries its parameters, so they can be raised later and old hashes still verify (and
are re-hashed at the next sign-in). A token is 32 random bytes shown once; only its
SHA-256 is stored (a token is random, so a fast hash is enough and lookups stay indexed).

The sign-in rate limit counts failures in the audit log (per user name and per client
address, within ``[web] login_window_s``): it survives restarts and holds across processes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.web import WebSettings
from segnode.node.admin.actors import Actor
from segnode.node.admin.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    SignInRefusedError,
)
from segnode.storage.accounts import (
    all_users,
    token_by_hash,
    tokens_of,
    user_by_name,
    user_by_oidc_subject,
)
from segnode.storage.audit import LOGIN, failed_logins_since, login_window_start, record_audit
from segnode.storage.database import read_only_session
from segnode.storage.models import ApiToken, User, UserRole, utc_now

MIN_PASSWORD_LENGTH = 12
TOKEN_PREFIX = "sgn_"
_hasher = PasswordHasher()
# Verifying against this when the user does not exist takes as long as a real check, so
# the response time does not tell which user names exist.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


@dataclass(frozen=True, slots=True)
class UserView:
    """A user as pages and the API show them (never the hash)."""

    id: int
    username: str
    role: UserRole
    local_password: bool
    oidc: bool
    disabled: bool
    last_login_at: str | None

    @classmethod
    def of(cls, user: User) -> UserView:
        return cls(
            user.id,
            user.username,
            UserRole(user.role),
            user.password_hash is not None,
            user.oidc_subject is not None,
            user.disabled,
            user.last_login_at.isoformat() if user.last_login_at else None,
        )


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def actor_of(user: User, client: str | None) -> Actor:
    return Actor(user.username, UserRole(user.role), client)


def add_user(
    sessions: sessionmaker[Session], actor: Actor, username: str, role: UserRole, password: str | None
) -> UserView:
    """A local user (``password`` set) or one who signs in only through the identity provider."""
    actor.require(UserRole.ADMIN, "adding a user")
    if not username or len(username) > 128 or username.startswith("cli:"):
        raise InvalidInputError("a user name has 1-128 characters and does not start with 'cli:'")
    if password is not None:
        _check_password(password)
    with sessions.begin() as session:
        if user_by_name(session, username) is not None:
            raise ConflictError(f"user {username!r} exists")
        user = User(
            username=username,
            role=role,
            password_hash=_hasher.hash(password) if password is not None else None,
            created_at=utc_now(),
        )
        session.add(user)
        session.flush()
        record_audit(
            session, actor.name, "user.add", username, client=actor.client, detail={"role": role.value}
        )
        return UserView.of(user)


def change_user(
    sessions: sessionmaker[Session],
    actor: Actor,
    username: str,
    *,
    role: UserRole | None = None,
    password: str | None = None,
    disabled: bool | None = None,
) -> UserView:
    actor.require(UserRole.ADMIN, "changing a user")
    if password is not None:
        _check_password(password)
    with sessions.begin() as session:
        user = user_by_name(session, username)
        if user is None:
            raise NotFoundError(f"no user {username!r}")
        changed: dict[str, object] = {}
        if role is not None:
            user.role, changed["role"] = role, role.value
        if password is not None:
            user.password_hash, changed["password"] = _hasher.hash(password), "changed"
        if disabled is not None:
            user.disabled, changed["disabled"] = disabled, disabled
        record_audit(session, actor.name, "user.change", username, client=actor.client, detail=changed)
        return UserView.of(user)


def users(sessions: sessionmaker[Session], actor: Actor) -> list[UserView]:
    actor.require(UserRole.ADMIN, "listing users")
    with read_only_session(sessions) as session:
        return [UserView.of(user) for user in all_users(session)]


def has_users(sessions: sessionmaker[Session]) -> bool:
    with read_only_session(sessions) as session:
        return bool(all_users(session))


def sign_in(
    sessions: sessionmaker[Session], settings: WebSettings, username: str, password: str, client: str | None
) -> Actor:
    """Check a local user's password; every attempt is audited, failures count to the limit.

    Raises:
        SignInRefusedError: wrong name or password, disabled, or too many recent failures
            (``rate_limited``; checked first, so a correct password does not get through).
    """
    refusal: SignInRefusedError | None = None
    # The failure's audit row must be committed (the rate limit counts it), so the
    # refusal is raised after the transaction, never inside it.
    with sessions.begin() as session:
        failures = failed_logins_since(session, username, client, login_window_start(settings.login_window_s))
        user = user_by_name(session, username)
        if failures >= settings.login_max_failures:
            record_audit(session, username, LOGIN, username, ok=False, client=client, detail={"refused": "rate limited"})
            refusal = SignInRefusedError(
                f"too many failed sign-ins; try again in {settings.login_window_s:.0f} s", rate_limited=True
            )
        else:
            matched: bool
            try:
                matched = _hasher.verify(user.password_hash if user and user.password_hash else _DUMMY_HASH, password)
            except (VerificationError, InvalidHashError):
                matched = False
            ok = matched and user is not None and user.password_hash is not None and not user.disabled
            record_audit(session, username, LOGIN, username, ok=ok, client=client, detail={"method": "password"})
            if not ok or user is None:
                refusal = SignInRefusedError("wrong user name or password, or the user is disabled")
            else:
                if user.password_hash is not None and _hasher.check_needs_rehash(user.password_hash):
                    user.password_hash = _hasher.hash(password)
                user.last_login_at = utc_now()
                actor = actor_of(user, client)
    if refusal is not None:
        raise refusal
    return actor


def sign_in_oidc(
    sessions: sessionmaker[Session],
    subject: str,
    username: str,
    default_role: UserRole,
    client: str | None,
) -> Actor:
    """The identity provider vouched for ``subject``: its user (created at first sign-in)."""
    with sessions.begin() as session:
        user = user_by_oidc_subject(session, subject)
        if user is None:
            name = username if user_by_name(session, username) is None else f"{username} ({subject[:16]})"
            user = User(username=name, role=default_role, oidc_subject=subject, created_at=utc_now())
            session.add(user)
            session.flush()
            record_audit(session, name, "user.add", name, client=client, detail={"role": default_role.value, "via": "oidc"})
        ok = not user.disabled
        record_audit(session, user.username, LOGIN, user.username, ok=ok, client=client, detail={"method": "oidc"})
        if ok:
            user.last_login_at = utc_now()
        actor, name = actor_of(user, client), user.username
    if not ok:  # raised after the commit: the refused sign-in stays in the audit log
        raise SignInRefusedError(f"user {name!r} is disabled")
    return actor


def current_actor(sessions: sessionmaker[Session], username: str, client: str | None) -> Actor | None:
    """The actor behind a session cookie, re-read each request (a disabled user is out at once)."""
    with read_only_session(sessions) as session:
        user = user_by_name(session, username)
        return None if user is None or user.disabled else actor_of(user, client)


def create_token(sessions: sessionmaker[Session], actor: Actor, username: str, name: str) -> str:
    """A new API token for ``username`` (an admin's, or one's own); returned once, stored hashed."""
    if username != actor.name:
        actor.require(UserRole.ADMIN, "creating a token for another user")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with sessions.begin() as session:
        user = user_by_name(session, username)
        if user is None:
            raise NotFoundError(f"no user {username!r}")
        session.add(
            ApiToken(user_id=user.id, name=name, token_sha256=_token_hash(token), created_at=utc_now())
        )
        record_audit(session, actor.name, "token.create", username, client=actor.client, detail={"name": name})
    return token


def revoke_tokens(sessions: sessionmaker[Session], actor: Actor, username: str) -> int:
    actor.require(UserRole.ADMIN, "revoking tokens")
    with sessions.begin() as session:
        user = user_by_name(session, username)
        if user is None:
            raise NotFoundError(f"no user {username!r}")
        live = [token for token in tokens_of(session, user.id) if token.revoked_at is None]
        for token in live:
            token.revoked_at = utc_now()
        record_audit(session, actor.name, "token.revoke", username, client=actor.client, detail={"revoked": len(live)})
        return len(live)


def token_actor(sessions: sessionmaker[Session], token: str, client: str | None) -> Actor | None:
    """The actor a bearer token stands for, or None (unknown, revoked, or its user disabled)."""
    with sessions.begin() as session:
        row = token_by_hash(session, _token_hash(token))
        if row is None:
            return None
        user = session.get(User, row.user_id)
        if user is None or user.disabled:
            return None
        row.last_used_at = utc_now()
        return actor_of(user, client)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


INITIAL_PASSWORD_FILE = "initial-admin-password"


def ensure_first_admin(sessions: sessionmaker[Session], data_dir: Path) -> Path | None:
    """With no user at all, create ``admin`` with a random password written (0600) to
    ``<data_dir>/initial-admin-password``; the path, or None when users exist.

    Why: the dashboard has no anonymous access, and the one command that starts a fresh
    node must leave a way in; whoever can read the data folder already holds the node.
    The file is not removed by the node: the admin changes the password
    (``segnode users passwd admin`` or the users page) and deletes it.
    """
    with sessions.begin() as session:
        if all_users(session):
            return None
        password = secrets.token_urlsafe(18)
        session.add(
            User(username="admin", role=UserRole.ADMIN, password_hash=_hasher.hash(password), created_at=utc_now())
        )
        record_audit(session, "node", "user.add", "admin", detail={"role": "admin", "via": "first start"})
        path = Path(data_dir) / INITIAL_PASSWORD_FILE
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password + "\n")
    return path
