"""Users and API tokens as rows; hashing and the sign-in policy live in ``segnode.node.admin.accounts``.

Why only rows here: storage keeps what the database holds and how to find it; which hash,
how a password is checked and when a sign-in is refused are the service's rules.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from segnode.storage.models import ApiToken, User


def user_by_name(session: Session, username: str) -> User | None:
    return session.execute(select(User).where(User.username == username)).scalar_one_or_none()


def user_by_oidc_subject(session: Session, subject: str) -> User | None:
    return session.execute(select(User).where(User.oidc_subject == subject)).scalar_one_or_none()


def all_users(session: Session) -> list[User]:
    return list(session.execute(select(User).order_by(User.username)).scalars())


def token_by_hash(session: Session, token_sha256: str) -> ApiToken | None:
    """The live token with this hash, or None (unknown or revoked)."""
    return session.execute(
        select(ApiToken).where(ApiToken.token_sha256 == token_sha256, ApiToken.revoked_at.is_(None))
    ).scalar_one_or_none()


def tokens_of(session: Session, user_id: int) -> list[ApiToken]:
    return list(
        session.execute(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)).scalars()
    )
